"""Data-parallel training throughput on 1 and 2 devices (virtual CPUs here).

    python -m benchmarks.distributed_step --backend jax --config configs/f30k_gru.yaml \
        --batch-size 32 --steps 8

For each device count, a fresh process splits the CPU into that many
devices (`cora_keras.cpu_devices`), builds CoraModel under the backend's
engine (`train.distribution`: data_parallel on JAX, mirrored on
TensorFlow; none for one device) and runs `model.fit` over synthetic
batches of the global batch size (the statistics of benchmarks/train_step.py).
Prints per device count the median seconds and CPU seconds per step after
two warm-up steps, samples/s and the load average. Virtual devices share the
machine's cores: the figures show the cost of distribution (the
cross-device gathers, the sharded step), not a speed-up; on GPUs each
device has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ENGINES = {"jax": "data_parallel", "tensorflow": "mirrored"}
WARMUP_STEPS = 2


def measure(args: argparse.Namespace) -> dict:
    """One device count, in this process (the devices are made first)."""
    from cora_keras.cpu_devices import split_cpu

    split_cpu(args.devices, args.backend)
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.train_step import FITTED_BUDGETS
    from cora_keras.config import load_config
    from cora_keras.distribution import training_engine
    from cora_keras.model import CoraModel
    from cora_keras.synthetic import synthetic_batch

    config = load_config(args.config, FITTED_BUDGETS + args.set)
    engine = training_engine(ENGINES[args.backend] if args.devices > 1 else "none")
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(config.model, args.batch_size, rng) for _ in range(4)]
    dataset = tf.data.Dataset.from_tensor_slices(
        tuple({k: np.stack([b[i][k] for b in batches]) for k in batches[0][i]} for i in (0, 1))
    ).repeat()
    times, cpu_seconds = [], []

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter(), _cpu_seconds()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step
            times.append(time.perf_counter() - self.start[0])
            cpu_seconds.append(_cpu_seconds() - self.start[1])

    with engine.scope():
        model = CoraModel(config.model, config.loss)
        model.build()
        model.compile(
            optimizer=keras.optimizers.AdamW(config.train.learning_rate),
            jit_compile=args.backend == "jax",
        )
        model.fit(
            dataset,
            steps_per_epoch=args.steps + WARMUP_STEPS,
            callbacks=[StepTimes()],
            verbose=0,
        )
    median = float(np.median(times[WARMUP_STEPS:]))
    return {
        "devices": engine.num_replicas,
        "median_step_s": median,
        "samples_per_s": args.batch_size / median,
        "cpu_s_per_step": float(np.median(cpu_seconds[WARMUP_STEPS:])),
        "load_average": os.getloadavg()[0],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(ENGINES), default="jax")
    parser.add_argument("--config", default="configs/f30k_gru.yaml")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--devices", type=int, help="measure this count only, in this process")
    args = parser.parse_args()
    if args.devices is not None:
        print(json.dumps(measure(args)))
        return
    print(f"backend: {args.backend}  engine: {ENGINES[args.backend]}  global batch: {args.batch_size}  "
          f"config: {args.config}  cores: {os.cpu_count()}")
    for devices in (1, 2):
        command = [sys.executable, "-m", "benchmarks.distributed_step", *sys.argv[1:], "--devices", str(devices)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"devices: {figures['devices']}  median step: {figures['median_step_s']:.3f} s  "
              f"samples/s: {figures['samples_per_s']:.1f}  CPU s/step: {figures['cpu_s_per_step']:.2f}  "
              f"load average: {figures['load_average']:.2f}", flush=True)


if __name__ == "__main__":
    main()
