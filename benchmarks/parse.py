"""End-to-end throughput of the caption -> scene graph parser.

    python -m benchmarks.parse --processes 2 --repeats 3

Parses the 5,000 Flickr30K test captions (../shared/data/captions/
f30k_test_caps.txt, or --captions) with `parse_captions`, timing each run
from the call to the last graph, worker start-up and spaCy loading
included. Each run line also gives the CPU seconds of all processes and the
machine's load average, since wall time on a shared machine depends on what
else runs; `cpu-bound rate` is what the run's CPU time allows on
`--processes` idle cores. The last line is `captions/s: X`, the median run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

from cora_keras.scene_graph.parser import parse_captions, read_captions

DEFAULT_CAPTIONS = Path(__file__).resolve().parents[1] / "../shared/data/captions/f30k_test_caps.txt"


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


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
        load = os.getloadavg()[0]
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        graphs = parse_captions(captions, processes=args.processes, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        assert len(graphs) == len(captions)
        rates.append(len(captions) / seconds)
        print(
            f"run {run + 1}: {len(captions)} captions, {args.processes} processes, "
            f"{seconds:.2f} s wall, {cpu:.2f} s CPU, load average {load:.1f}, "
            f"cpu-bound rate {len(captions) * args.processes / cpu:.0f}/s"
        )
    print(f"captions/s: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
