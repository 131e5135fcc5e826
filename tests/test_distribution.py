"""Data-parallel training (cora_keras/distribution.py): engine choice and
errors, the replica helpers, sharded input, and one device against two on
the same global batch.

The comparisons run `tests/distributed_run.py` in a subprocess that makes
two virtual CPU devices before its backend loads: MirroredStrategy in the
TensorFlow pass, DataParallel in the JAX pass (about 40 s and 90 s each on
two shared cores).
"""

import os
import subprocess
import sys
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
    four.check_batch_sizes(SimpleNamespace(batch_size=128, eval_batch_size=6))
    with pytest.raises(ConfigError, match=r"train.batch_size = 126 does not split over the 4 devices"):
        four.check_batch_sizes(SimpleNamespace(batch_size=126, eval_batch_size=8))
    training_engine("none").check_batch_sizes(SimpleNamespace(batch_size=7, eval_batch_size=3))


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


def _single_and_multi(engine: str, part: str, tmp_path: Path) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.distributed_run", BACKEND, engine, part, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    single, multi = (dict(np.load(tmp_path / f"{side}.npz")) for side in ("single", "multi"))
    assert (int(single.pop("replicas")), int(multi.pop("replicas"))) == (1, 2)
    assert sorted(single) == sorted(multi)
    return single, multi


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


def _assert_fits_equal(single: dict, multi: dict) -> None:
    logs = [k for k in single if not k.startswith("fit/change/")]
    assert "fit/loss" in logs and "fit/val_rsum" in logs
    for key in logs:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, err_msg=key)
    changes = [k for k in single if k.startswith("fit/change/")]
    step = np.concatenate([single[k].ravel() for k in changes])
    gap = np.concatenate([(multi[k] - single[k]).ravel() for k in changes])
    # Weights whose gradient is zero in exact arithmetic (a score bias under
    # softmax) get Adam steps of rounding noise; overall the two runs agree.
    assert np.linalg.norm(step) > 1e-3
    assert np.linalg.norm(gap) < 1e-3 * np.linalg.norm(step)


@pytest.mark.tf_only
def test_mirrored_step_equals_the_single_device_step_on_the_global_batch(tmp_path):
    _assert_one_step_equal(*_single_and_multi("mirrored", "step", tmp_path))


@pytest.mark.tf_only
def test_mirrored_fit_equals_the_single_device_fit(tmp_path):
    _assert_fits_equal(*_single_and_multi("mirrored", "fit", tmp_path))


@jax_only
def test_data_parallel_step_equals_the_single_device_step_on_the_global_batch(tmp_path):
    _assert_one_step_equal(*_single_and_multi("data_parallel", "step", tmp_path))


@jax_only
def test_data_parallel_fit_equals_the_single_device_fit(tmp_path):
    _assert_fits_equal(*_single_and_multi("data_parallel", "fit", tmp_path))
