"""One process of a two-process training run on localhost.

    python -m tests.multihost_run BACKEND single ROOT
    python -m tests.multihost_run BACKEND probe INDEX PORTS
    python -m tests.multihost_run BACKEND worker INDEX PORTS ROOT

ROOT/data holds the split of `distributed_run.tiny_data`.

`single`: trains it on one device (engine `none`) into ROOT/none and writes
ROOT/single.npz (`distributed_run.fit_results`) and ROOT/initial.npz (the
weights it started from).

`probe` and `worker`: process INDEX (0 or 1) of a cluster whose processes
listen on PORTS (two localhost ports, comma-separated), one CPU device
each. It joins the cluster (JAX: the KERAS_DISTRIBUTION_* variables, the
first port the coordinator's; TensorFlow: a TF_CONFIG of two workers).

- `probe`: one cross-process sum; exits 1 unless it is right.
- `worker`: trains the same data under `CLUSTER_ENGINES[BACKEND]` into
  ROOT/ENGINE, the same directory for both, and writes
  ROOT/writes-INDEX.json: its process id and what it wrote under that
  directory as Python audit events see it (files opened for writing,
  renames, new or removed files and folders; not what C libraries write,
  such as HDF5 or TensorBoard). Process 0, the chief, then writes
  ROOT/multi.npz; `replicas` there counts the cluster's devices.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CLUSTER_ENGINES = {"jax": "data_parallel", "tensorflow": "multi_worker_mirrored"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FILE_EVENTS = ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move")


def _join_cluster(backend: str, index: int, ports: list[str]) -> None:
    addresses = [f"localhost:{port}" for port in ports]
    if backend == "jax":
        os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = ",".join(addresses)
        os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"] = str(len(addresses))
        os.environ["KERAS_DISTRIBUTION_PROCESS_ID"] = str(index)
    else:
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        )


def _probe(backend: str, index: int) -> None:
    """Exit 1 unless a sum over the two processes of (1, 2) gives 3."""
    if backend == "jax":
        import keras
        from jax.experimental import multihost_utils

        keras.distribution.initialize()
        total = int(multihost_utils.process_allgather(index + 1).sum())
    else:
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        summed = strategy.run(
            tf.function(lambda: tf.distribute.get_replica_context().all_reduce("sum", index + 1.0))
        )
        total = int(strategy.experimental_local_results(summed)[0])
    if total != 3:
        raise SystemExit(f"process {index}: the cross-process sum of 1 and 2 gave {total}")


def _record_writes(run_dir: Path, writes: list) -> None:
    """Append every audited write under `run_dir` to `writes`."""
    inside = os.fspath(run_dir.resolve())

    def under(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        path = os.path.abspath(os.fsdecode(os.fspath(path)))
        return path == inside or path.startswith(inside + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if mode else bool(flags & _WRITE_FLAGS)
            if writing and under(path):
                writes.append([event, os.fsdecode(os.fspath(path))])
        elif event in _FILE_EVENTS and any(under(arg) for arg in args[:2]):
            writes.append([event, *(os.fsdecode(os.fspath(a)) for a in args[:2] if under(a))])

    sys.addaudithook(hook)


def _cluster_replicas(backend: str, engine_name: str) -> int:
    if backend == "jax":
        import jax

        return jax.device_count()
    from cora_keras.distribution import training_engine

    return training_engine(engine_name).num_replicas  # the process's one strategy


def main(backend: str, role: str, *rest: str) -> None:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.pop("XLA_FLAGS", None)  # one CPU device per process
    import numpy as np

    from tests.distributed_run import fit_results, initial_weights, train_tiny

    if role == "single":
        root = Path(rest[0])
        out = train_tiny(root, "none")
        np.savez(root / "single.npz", replicas=np.int64(1), **fit_results(out))
        np.savez(root / "initial.npz", **initial_weights(out))
        return
    index, ports = int(rest[0]), rest[1].split(",")
    _join_cluster(backend, index, ports)
    if role == "probe":
        _probe(backend, index)
        return
    root, engine_name = Path(rest[2]), CLUSTER_ENGINES[backend]
    writes: list = []
    _record_writes(root / engine_name, writes)
    out = train_tiny(root, engine_name)
    (root / f"writes-{index}.json").write_text(json.dumps({"pid": os.getpid(), "writes": writes}))
    if index == 0:
        results = {"replicas": np.int64(_cluster_replicas(backend, engine_name)), **fit_results(out)}
        np.savez(root / "multi.npz", **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
