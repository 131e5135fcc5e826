"""Training on one device and data-parallel on two, side by side.

    python -m tests.distributed_run BACKEND ENGINE PART OUT_DIR

Run as a subprocess: it makes two virtual CPU devices before the backend
loads (JAX: the XLA host device count; TensorFlow: two logical CPUs), then
runs PART under ENGINE and writes OUT_DIR/multi.npz; for `step` it also
runs it on one device and writes OUT_DIR/single.npz with the same keys,
for the test to compare (the one-device `fit` is `multihost_run single`'s,
shared with the two-process comparison):

- `step`: one SGD step at rate 1 of a small CoraModel on one batch of 8
  whose image ids repeat across the two halves (so positives and
  "same image" pairs cross devices): the four loss terms, the gradient of
  every trainable weight (its change) and the BatchNorm moving statistics.
- `fit`: `cora-keras train` on the tiny split of `tests/tiny_run.py`
  (copied as train and dev), one epoch of 3 batches of 4 captions: the
  epoch's losses and dev retrieval figures, the dev similarity picture
  and the weights after the epoch.

The multi side runs under ENGINE (`train.distribution`); `replicas` records
how many devices it used. Dropout is off, so both sides are deterministic.
"""

from __future__ import annotations

import os
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


def tiny_data(root: Path) -> Path:
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


def train_tiny(root: Path, engine_name: str) -> Path:
    """`cora-keras train` of one epoch on `tiny_data` under `engine_name`
    into ROOT/ENGINE_NAME; the run directory."""
    from cora_keras import cli
    from cora_keras.config import config_from_dict, save_config
    from tests.tiny_run import TINY_CONFIG

    config = config_from_dict(TINY_CONFIG)
    config.model.__dict__.update(NO_DROPOUT)
    config.train.batch_size = 4
    config.train.warmup_epochs = 0
    config_path = root / f"{engine_name}-{os.getpid()}.yaml"  # processes of a cluster share root
    save_config(config, config_path)
    out = root / engine_name
    status = cli.main(
        ["train", "--config", str(config_path), "--data", str(root / "data"),
         "--out", str(out), "--epochs", "1", "--distribution", engine_name]
    )
    if status != 0:
        raise SystemExit(f"cora-keras train --distribution {engine_name} failed ({status})")
    return out


def fit_results(out: Path) -> dict:
    """The epoch's logs, the dev similarity picture the run logged to
    TensorBoard and the model's weights after the epoch, of the run in
    `out` (read from its files: no model is built)."""
    import json

    import numpy as np

    from cora_keras.run import LAST_WEIGHTS_FILE

    (epoch,) = json.loads((out / "history.json").read_text())
    results = {f"fit/{name}": np.float32(value) for name, value in epoch.items() if name != "epoch"}
    results["fit/dev_similarity"] = _logged_picture(out)
    return {**results, **_model_weights(out / LAST_WEIGHTS_FILE)}


def initial_weights(out: Path) -> dict:
    """The weights the run in `out` started from, named as in `fit_results`."""
    import keras

    from cora_keras.config import load_config
    from cora_keras.model import CoraModel
    from cora_keras.run import CONFIG_FILE

    config = load_config(out / CONFIG_FILE)
    keras.utils.set_random_seed(config.train.seed)  # as training starts
    model = CoraModel(config.model, config.loss)
    model.build()
    path = out.parent / f"{out.name}-initial.weights.h5"
    model.save_weights(path)
    return _model_weights(path)


def _model_weights(path: Path) -> dict:
    """The model's arrays in a Keras weights file (not the optimizer's),
    keyed `fit/weight/<path in the file>`."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: arrays.__setitem__(f"fit/weight/{name}", item[()])
            if isinstance(item, h5py.Dataset) and not name.startswith("optimizer/")
            else None
        )
    return arrays


def _logged_picture(out: Path):
    """The dev similarity picture of the run's first epoch, decoded."""
    import tensorflow as tf

    from cora_keras.training import LOG_DIR, PICTURE_TAG

    for path in sorted((out / LOG_DIR / "validation").glob("events.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
                if value.tag == PICTURE_TAG:  # width, height, PNG
                    return tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
    raise FileNotFoundError(f"{out / LOG_DIR}: no {PICTURE_TAG} picture")


PARTS = {"step": lambda root, engine: _one_step(engine), "fit": lambda root, engine: fit_results(train_tiny(root, engine.name))}


def main(backend: str, engine_name: str, part: str, out_dir: str) -> None:
    split_cpu(DEVICES, backend)
    import numpy as np

    from cora_keras.distribution import training_engine

    root = Path(out_dir)
    tiny_data(root)
    sides = {"single": "none", "multi": engine_name} if part == "step" else {"multi": engine_name}
    for name, side_engine in sides.items():
        engine = training_engine(side_engine)
        results = {"replicas": np.int64(engine.num_replicas)}
        results.update(PARTS[part](root, engine))
        np.savez(root / f"{name}.npz", **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
