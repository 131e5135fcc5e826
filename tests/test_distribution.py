"""Data-parallel training (cora_keras/distribution.py): engine choice and
errors, the replica helpers, sharded input, and one device against two on
the same global batch.

The comparisons run `tests/distributed_run.py` in a subprocess that makes
two virtual CPU devices before its backend loads: MirroredStrategy in the
TensorFlow pass, DataParallel in the JAX pass (about 30 s and 50 to 65 s
each on two shared cores). The two-process comparison runs
`tests/multihost_run.py` as a cluster of two processes on localhost:
MultiWorkerMirroredStrategy in the TensorFlow pass (about 20 s),
DataParallel over two JAX processes in the JAX pass (80 to 100 s under
load: every variable a process creates is checked across processes). The
fits of both are compared with one one-device fit per pass.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from cora_keras import cli
from cora_keras.config import DISTRIBUTIONS, Config, ConfigError, apply_overrides
from cora_keras.cpu_devices import split_cpu
from cora_keras.data.pipeline import InputShard
from cora_keras.distribution import (
    ENGINE_BACKENDS,
    TrainingEngine,
    gather_replicas,
    replica_input_shard,
    replica_share,
    replica_sum,
    training_engine,
)
from cora_keras.training import run_config
from tests.distributed_run import tiny_data
from tests.multihost_run import CLUSTER_ENGINES

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="needs the JAX backend")


# ------------------------------------------------------------ config, CLI


def test_every_config_value_has_an_engine():
    assert tuple(ENGINE_BACKENDS) == DISTRIBUTIONS


def test_unknown_distribution_names_the_allowed_values():
    with pytest.raises(ConfigError, match="train.distribution: 'mirror' is not one of 'none', 'data_parallel'"):
        apply_overrides(Config(), ["train.distribution=mirror"])


def test_cli_flag_sets_the_config_key(tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text("train: {batch_size: 8}\n")
    args = cli.build_parser().parse_args(
        ["train", "--config", str(config_path), "--data", "d", "--out", "o", "--distribution", "mirrored"]
    )
    config = run_config(args.config, args.out, args.set, distribution=args.distribution)
    assert (config.train.distribution, config.train.batch_size) == ("mirrored", 8)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--distribution", "gpus"])


@pytest.mark.parametrize("name", [n for n, b in ENGINE_BACKENDS.items() if b not in (None, BACKEND)])
def test_engine_of_another_backend_is_refused_with_the_backend_it_needs(name):
    needed = ENGINE_BACKENDS[name]
    with pytest.raises(ConfigError, match=f"{name}' runs on the {needed} backend .*this process runs {BACKEND}"):
        training_engine(name)


def test_batch_sizes_must_split_over_the_devices():
    four = TrainingEngine("mirrored", strategy=SimpleNamespace(num_replicas_in_sync=4))
    four.check_batch_sizes(SimpleNamespace(batch_size=128, eval_batch_size=6, captions_per_image=1))
    with pytest.raises(ConfigError, match=r"train.batch_size = 126 does not split over the 4 devices"):
        four.check_batch_sizes(SimpleNamespace(batch_size=126, eval_batch_size=8, captions_per_image=1))
    with pytest.raises(ConfigError, match=r"train.captions_per_image = 4 needs train.distribution = 'none'"):
        four.check_batch_sizes(SimpleNamespace(batch_size=128, eval_batch_size=8, captions_per_image=4))
    training_engine("none").check_batch_sizes(
        SimpleNamespace(batch_size=8, eval_batch_size=3, captions_per_image=4)
    )


def test_cpu_split_only_for_backends_with_an_engine():
    with pytest.raises(ValueError, match="backend 'torch'; expected 'jax' or 'tensorflow'"):
        split_cpu(2, "torch")


def test_replica_helpers_are_the_identity_outside_replicas():
    x = keras.ops.convert_to_tensor(np.arange(6, dtype="float32").reshape(3, 2))
    mask = keras.ops.convert_to_tensor(np.array([True, False, True]))
    gathered = gather_replicas({"x": x, "mask": mask})
    assert gathered["x"] is x and gathered["mask"] is mask
    assert replica_sum(x) is x and replica_share(x) is x


def test_tensorflow_workers_build_their_replicas_parts_in_replica_order():
    import tensorflow as tf

    shards = [
        replica_input_shard(tf.distribute.InputContext(2, worker, num_replicas_in_sync=6))
        for worker in range(2)
    ]
    assert shards == [InputShard(6, (0, 1, 2)), InputShard(6, (3, 4, 5))]
    assert all(shard.per_part_budgets for shard in shards)


# ----------------------------------------------------- one device vs two


def _two_devices(engine: str, part: str, tmp_path: Path) -> Path:
    """Run tests/distributed_run.py; the folder of its .npz files."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.distributed_run", BACKEND, engine, part, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp_path


def _single_and_multi(single_npz: Path, multi_npz: Path) -> tuple[dict, dict]:
    """The results of one device and of two, checked to have the same keys."""
    single, multi = dict(np.load(single_npz)), dict(np.load(multi_npz))
    assert (int(single.pop("replicas")), int(multi.pop("replicas"))) == (1, 2)
    assert sorted(single) == sorted(multi)
    return single, multi


@pytest.fixture(scope="module")
def one_device_fit(tmp_path_factory) -> Path:
    """The folder of `multihost_run single`: the tiny fit on one device
    (single.npz, initial.npz), to which every fit on two devices or
    processes is compared."""
    root = tmp_path_factory.mktemp("one_device")
    tiny_data(root)
    ((code, tail),) = _launch({"single": ["single", str(root)]}, root).values()
    assert code == 0, tail
    return root


def _assert_one_step_equal(single: dict, multi: dict) -> None:
    for term in ("loss", "contrastive_loss", "triplet_loss", "specificity_loss"):
        np.testing.assert_allclose(multi[f"step/{term}"], single[f"step/{term}"], rtol=1e-5, err_msg=term)
    gradients = [k for k in single if k.startswith("step/gradient/")]
    scale = max(float(np.max(np.abs(single[k]))) for k in gradients)
    assert scale > 1e-3
    for key in gradients:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    for key in (k for k in single if k.startswith("step/state/")):
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-7, err_msg=key)


def _fits(one_device_fit: Path, multi_npz: Path) -> tuple[dict, dict, dict]:
    """The one-device fit, a fit on two devices or processes, and the
    weights both started from."""
    single, multi = _single_and_multi(one_device_fit / "single.npz", multi_npz)
    return single, multi, dict(np.load(one_device_fit / "initial.npz"))


def _assert_fits_equal(single: dict, multi: dict, initial: dict) -> None:
    picture = "fit/dev_similarity"
    logs = [k for k in single if not k.startswith("fit/weight/") and k != picture]
    assert "fit/loss" in logs and "fit/val_rsum" in logs
    for key in logs:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, err_msg=key)
    # Every dev similarity, scaled to 0..255 and rounded.
    assert single[picture].shape == (30, 30, 3)
    np.testing.assert_allclose(multi[picture].astype(int), single[picture].astype(int), atol=1)
    assert sorted(initial) == sorted(k for k in single if k.startswith("fit/weight/"))
    step = np.concatenate([(single[k] - initial[k]).ravel() for k in initial])
    gap = np.concatenate([(multi[k] - single[k]).ravel() for k in initial])
    # Weights whose gradient is zero in exact arithmetic (a score bias under
    # softmax) get Adam steps of rounding noise; overall the two runs agree.
    assert np.linalg.norm(step) > 1e-3
    assert np.linalg.norm(gap) < 1e-3 * np.linalg.norm(step)


@pytest.mark.tf_only
def test_mirrored_step_equals_the_single_device_step_on_the_global_batch(tmp_path):
    out = _two_devices("mirrored", "step", tmp_path)
    _assert_one_step_equal(*_single_and_multi(out / "single.npz", out / "multi.npz"))


@pytest.mark.tf_only
def test_mirrored_fit_equals_the_single_device_fit(one_device_fit, tmp_path):
    out = _two_devices("mirrored", "fit", tmp_path)
    _assert_fits_equal(*_fits(one_device_fit, out / "multi.npz"))


@jax_only
def test_data_parallel_step_equals_the_single_device_step_on_the_global_batch(tmp_path):
    out = _two_devices("data_parallel", "step", tmp_path)
    _assert_one_step_equal(*_single_and_multi(out / "single.npz", out / "multi.npz"))


@jax_only
def test_data_parallel_fit_equals_the_single_device_fit(one_device_fit, tmp_path):
    out = _two_devices("data_parallel", "fit", tmp_path)
    _assert_fits_equal(*_fits(one_device_fit, out / "multi.npz"))


# ------------------------------------------------- two processes vs one

CLUSTER_TIMEOUT = 300  # seconds for all processes of a launch together


def _free_ports(count: int) -> str:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = ",".join(str(s.getsockname()[1]) for s in sockets)
    for s in sockets:
        s.close()
    return ports


def _launch(runs: dict, logs: Path) -> dict:
    """Start `python -m tests.multihost_run BACKEND *args` for every
    `name: args` at once; their exit codes and output tails by name, all
    killed at CLUSTER_TIMEOUT."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "KERAS_BACKEND", "TF_CONFIG") and not k.startswith("KERAS_DISTRIBUTION_")
    }
    processes = {}
    for name, args in runs.items():
        with open(logs / f"{name}.log", "w") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.multihost_run", BACKEND, *args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
    deadline = time.monotonic() + CLUSTER_TIMEOUT
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            codes[name] = "timed out"
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()
    return {name: (code, (logs / f"{name}.log").read_text()[-3000:]) for name, code in codes.items()}


@pytest.fixture(scope="module")
def localhost_cluster(tmp_path_factory):
    """Skip unless two processes of this backend can sum across processes here."""
    if BACKEND not in CLUSTER_ENGINES:
        pytest.skip(f"no multi-process engine on {BACKEND}")
    ports = _free_ports(2)
    results = _launch({f"probe{i}": ["probe", str(i), ports] for i in range(2)}, tmp_path_factory.mktemp("probe"))
    failed = {name: tail for name, (code, tail) in results.items() if code != 0}
    if failed:
        pytest.skip(f"this machine cannot run a 2-process {BACKEND} cluster on localhost: {failed}")


def _run_files(run_dir: Path) -> Counter:
    """The run's files, TensorBoard event files by folder only (their names
    hold a time, the host and the process id)."""
    names = Counter()
    for path in run_dir.rglob("*"):
        if path.is_file():
            relative = path.relative_to(run_dir).as_posix()
            names[re.sub(r"events\.out\.tfevents\..*", "events", relative)] += 1
    return names


def test_two_process_fit_equals_the_one_process_fit_and_only_the_chief_writes(
    localhost_cluster, one_device_fit, tmp_path
):
    engine = CLUSTER_ENGINES[BACKEND]
    tiny_data(tmp_path)
    ports = _free_ports(2)
    results = _launch({f"worker{i}": ["worker", str(i), ports, str(tmp_path)] for i in range(2)}, tmp_path)
    for name, (code, tail) in results.items():
        assert code == 0, f"{name}: {code}\n{tail}"
    # Losses, dev R@K and RSUM, every dev similarity, each weight's change.
    _assert_fits_equal(*_fits(one_device_fit, tmp_path / "multi.npz"))

    chief, other = (json.loads((tmp_path / f"writes-{i}.json").read_text()) for i in range(2))
    assert other["writes"] == []
    renamed = {Path(w[2]).name for w in chief["writes"] if w[0] == "os.rename"}
    assert {"config.yaml", "best.weights.h5", "last.weights.h5", "history.json"} <= renamed
    run_dir = tmp_path / engine
    assert _run_files(run_dir) == _run_files(one_device_fit / "none")
    events = [path.name for path in run_dir.rglob("events.out.tfevents.*")]
    assert events and all(f".{chief['pid']}." in name for name in events)
