"""Training on one device and data-parallel on two, side by side.

    python -m tests.distributed_run BACKEND ENGINE PART OUT_DIR

Run as a subprocess: it makes two virtual CPU devices before the backend
loads (JAX: the XLA host device count; TensorFlow: two logical CPUs), then
runs PART on one device and under ENGINE, and writes OUT_DIR/single.npz
and OUT_DIR/multi.npz with the same keys, for the test to compare:

- `step`: one SGD step at rate 1 of a small CoraModel on one batch of 8
  whose image ids repeat across the two halves (so positives and
  "same image" pairs cross devices): the four loss terms, the gradient of
  every trainable weight (its change) and the BatchNorm moving statistics.
- `fit`: `cora-keras train` on the tiny split of `tests/tiny_run.py`
  (copied as train and dev), one epoch of 3 batches of 4 captions: the
  epoch's losses and dev retrieval figures, and each weight's change.

The multi side runs under ENGINE (`train.distribution`); `replicas` records
how many devices it used. Dropout is off, so both sides are deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cora_keras.cpu_devices import split_cpu

DEVICES = 2
NO_DROPOUT = {
    "region_dropout": 0.0,
    "word_dropout": 0.0,
    "composer_dropout": 0.0,
    "relation_attention_dropout": 0.0,
}


def _one_step(engine) -> dict:
    import keras
    import numpy as np

    from cora_keras.config import LossConfig
    from cora_keras.model import CoraModel
    from cora_keras.synthetic import synthetic_batch
    from tests.helpers import small_model_config

    config = small_model_config(num_heads=4, **NO_DROPOUT)
    rng = np.random.default_rng(0)
    x, y = synthetic_batch(config, 8, rng, regions=(2, 6), entities=(1, 4))
    y["image_ids"] = np.array([0, 1, 2, 3, 0, 5, 6, 1], np.int32)
    with engine.scope():
        keras.utils.set_random_seed(1)
        model = CoraModel(config, LossConfig())
        model.build()
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            jit_compile=keras.backend.backend() == "jax",
        )
        before = [np.array(w.numpy()) for w in model.trainable_weights]
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            logs = model.fit(tf.data.Dataset.from_tensors((x, y)), verbose=0).history
        else:
            logs = model.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    results = {f"step/{name}": np.float32(values[0]) for name, values in logs.items()}
    for weight, start in zip(model.trainable_weights, before):
        results[f"step/gradient/{_in_model(weight)}"] = start - weight.numpy()
    for weight in model.non_trainable_weights:
        results[f"step/state/{_in_model(weight)}"] = np.array(weight.numpy())
    return results


def _in_model(weight) -> str:
    """The weight's path below the model (model names get a counter)."""
    return weight.path.split("/", 1)[1]


def _tiny_data(root: Path) -> Path:
    """The hand-made split of tests/tiny_run.py as train, dev and test."""
    import shutil

    from cora_keras.config import config_from_dict
    from tests.tiny_run import SPLIT, TINY_CONFIG, write_split

    data = root / "data"
    write_split(data, config_from_dict(TINY_CONFIG))
    for split in ("train", "dev"):
        shutil.copy(data / f"{SPLIT}_caps.txt", data / f"{split}_caps.txt")
        shutil.copy(data / f"{SPLIT}_ims.npy", data / f"{split}_ims.npy")
        shutil.copy(data / "scene_graphs" / f"{SPLIT}.jsonl", data / "scene_graphs" / f"{split}.jsonl")
    return data


def _fit(root: Path, engine_name: str) -> dict:
    import json

    import keras
    import numpy as np

    from cora_keras import cli
    from cora_keras.config import config_from_dict, save_config
    from cora_keras.model import CoraModel
    from cora_keras.run import LAST_WEIGHTS_FILE, load_run
    from tests.tiny_run import TINY_CONFIG

    data = root / "data"
    config = config_from_dict(TINY_CONFIG)
    config.model.__dict__.update(NO_DROPOUT)
    config.train.batch_size = 4
    config.train.warmup_epochs = 0
    save_config(config, root / f"{engine_name}.yaml")
    out = root / engine_name
    status = cli.main(
        ["train", "--config", str(root / f"{engine_name}.yaml"), "--data", str(data),
         "--out", str(out), "--epochs", "1", "--distribution", engine_name]
    )
    if status != 0:
        raise SystemExit(f"cora-keras train --distribution {engine_name} failed ({status})")
    (epoch,) = json.loads((out / "history.json").read_text())
    results = {f"fit/{name}": np.float32(value) for name, value in epoch.items() if name != "epoch"}
    run_config, model, _ = load_run(out)
    model.load_weights(out / LAST_WEIGHTS_FILE)
    keras.utils.set_random_seed(run_config.train.seed)  # as training starts
    initial = CoraModel(run_config.model, run_config.loss)
    initial.build()
    for weight, start in zip(model.weights, initial.weights):
        results[f"fit/change/{_in_model(weight)}"] = weight.numpy() - start.numpy()
    return results


PARTS = {"step": lambda root, engine: _one_step(engine), "fit": lambda root, engine: _fit(root, engine.name)}


def main(backend: str, engine_name: str, part: str, out_dir: str) -> None:
    split_cpu(DEVICES, backend)
    import numpy as np

    from cora_keras.distribution import training_engine

    root = Path(out_dir)
    _tiny_data(root)
    for name, engine in (("single", training_engine("none")), ("multi", training_engine(engine_name))):
        results = {"replicas": np.int64(engine.num_replicas)}
        results.update(PARTS[part](root, engine))
        np.savez(root / f"{name}.npz", **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
