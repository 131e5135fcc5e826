"""Timed training steps on synthetic batches: the command line, the batches
and the timing loop that `train_step.py` and `release_baseline.py` share,
so the two time the same steps on the same batches."""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from cora_keras.config import ModelConfig
from cora_keras.synthetic import synthetic_batch

MAX_DISTINCT_BATCHES = 4  # the steps cycle through at most this many batches


def step_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with --config, --batch-size, --steps and --set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/f30k_gru.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    return parser


def synthetic_batches(model: ModelConfig, batch_size: int, steps: int) -> list:
    """The (inputs, targets) batches of `steps` timed steps plus one warm-up,
    drawn from seed 0."""
    rng = np.random.default_rng(0)
    count = min(steps + 1, MAX_DISTINCT_BATCHES)
    return [synthetic_batch(model, batch_size, rng) for _ in range(count)]


def median_step_seconds(
    step: Callable[[object, object], float], batches: list, steps: int
) -> float:
    """Run one warm-up step and `steps` timed ones (`step(x, y)` returns the
    loss as a float, so the step has finished), printing each; returns the
    median seconds of the timed steps."""
    times = []
    for index in range(steps + 1):
        x, y = batches[index % len(batches)]
        start = time.perf_counter()
        loss = step(x, y)
        times.append(time.perf_counter() - start)
        print(f"step {index}: {times[-1]:.3f} s  loss {loss:.3f}", flush=True)
    return float(np.median(times[1:]))
