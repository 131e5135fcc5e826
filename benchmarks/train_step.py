"""Training throughput of CoraModel on synthetic batches.

    KERAS_BACKEND=jax python -m benchmarks.train_step --config configs/f30k_gru.yaml \
        --batch-size 32 --steps 10

Batches follow the issue's statistics: 20-36 valid regions, 2-6 entities,
0-2 attributes per entity, 1..n relations, phrases of 1-3 words. Prints
the median seconds per step after one warm-up step, then `samples/s: X`.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from cora_keras.config import load_config
from cora_keras.model import CoraModel
from cora_keras.synthetic import synthetic_batch

# Budgets that fit the synthetic statistics (4 entities, 4 attributes, 2.5
# relations per caption on average).
FITTED_BUDGETS = ["model.entity_budget=5", "model.attribute_budget=5", "model.relation_budget=3.5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/f30k_gru.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--no-jit", action="store_true", help="compile without XLA")
    args = parser.parse_args()

    config = load_config(args.config, FITTED_BUDGETS + args.set)  # --set wins
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(config.model, args.batch_size, rng) for _ in range(min(args.steps + 1, 4))]
    model = CoraModel(config.model, config.loss)
    model.build()
    model.compile(
        optimizer=keras.optimizers.AdamW(config.train.learning_rate, weight_decay=config.train.weight_decay),
        # XLA on JAX only: TF's XLA is slower than plain TF here and cannot
        # compile the GRU scan's TensorArray; torch runs eagerly.
        jit_compile=not args.no_jit and keras.backend.backend() == "jax",
    )
    times = []
    for step in range(args.steps + 1):
        x, y = batches[step % len(batches)]
        start = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        float(logs["loss"])
        times.append(time.perf_counter() - start)
        print(f"step {step}: {times[-1]:.3f} s  loss {float(logs['loss']):.3f}", flush=True)
    median = float(np.median(times[1:]))
    print(f"backend: {keras.backend.backend()}  batch: {args.batch_size}  "
          f"params: {model.count_params():,}  median step: {median:.3f} s")
    print(f"samples/s: {args.batch_size / median:.1f}")


if __name__ == "__main__":
    main()
