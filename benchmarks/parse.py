"""End-to-end throughput of the caption -> scene graph parser.

    python -m benchmarks.parse --processes 2 --repeats 3

Parses the 5,000 Flickr30K test captions (../shared/data/captions/
f30k_test_caps.txt, or --captions) with `parse_captions`, timing each run
from the call to the last graph, worker start-up and spaCy loading
included. Prints one line per run, then `captions/s: X`, the median run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from cora_keras.scene_graph.parser import parse_captions, read_captions

DEFAULT_CAPTIONS = Path(__file__).resolve().parents[1] / "../shared/data/captions/f30k_test_caps.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS)
    parser.add_argument("--limit", type=int, default=5000, help="first N captions")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    captions = read_captions(args.captions)[: args.limit]
    rates = []
    for run in range(args.repeats):
        start = time.perf_counter()
        graphs = parse_captions(captions, processes=args.processes, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        assert len(graphs) == len(captions)
        rates.append(len(captions) / seconds)
        print(f"run {run + 1}: {len(captions)} captions, {args.processes} processes, {seconds:.2f} s")
    print(f"captions/s: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
