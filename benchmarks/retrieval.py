"""Time the MS-COCO 5K protocol (5,000 images x 25,000 captions) on random embeddings.

Prints the time with and without the similarity matmul (best of `--repeats`),
then `seconds: X` last, X being the whole protocol including the matmul.

    python -m benchmarks.retrieval [--dim 1024] [--repeats 3]   (from the repo root)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from cora_keras import retrieval


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` wall-clock runs of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024, help="embedding size")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; the best is reported"
    )
    args = parser.parse_args()

    num_images, _ = retrieval.PROTOCOLS["coco_5k"]
    rng = np.random.default_rng(0)
    num_captions = retrieval.CAPTIONS_PER_IMAGE * num_images
    images = rng.standard_normal((num_images, args.dim), dtype=np.float32)
    captions = rng.standard_normal((num_captions, args.dim), dtype=np.float32)
    sims = retrieval.similarities(images, captions)

    ranks_only = best_time(lambda: retrieval.retrieval_metrics(sims), args.repeats)
    whole = best_time(lambda: retrieval.coco_5k(images, captions), args.repeats)
    rows, cols = sims.shape
    print(f"coco_5k: {rows} x {cols} {sims.dtype} similarities, dim {args.dim}")
    print(f"ranks + metrics from sims (no matmul): {ranks_only:.3f} s")
    print(f"whole protocol (matmul + ranks + metrics): {whole:.3f} s")
    print(f"seconds: {whole:.3f}")


if __name__ == "__main__":
    main()
