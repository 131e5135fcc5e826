"""Several devices on one CPU, to run data-parallel training on a machine
without accelerators (tests, benchmarks, trying `train.distribution`).

Call `split_cpu` before Keras loads its backend: JAX reads the XLA host
device count when it starts, TensorFlow's logical devices must be set
before its runtime starts. The devices share the CPU's cores, so they show
the cost of data parallelism, not a speed-up. This module imports no
Keras.
"""

from __future__ import annotations

import os


def split_cpu(count: int, backend: str) -> None:
    """Make `count` CPU devices for `backend` ("jax" or "tensorflow") and
    select that backend (KERAS_BACKEND)."""
    if backend not in ("jax", "tensorflow"):
        raise ValueError(f"split_cpu: backend {backend!r}; expected 'jax' or 'tensorflow'")
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )
