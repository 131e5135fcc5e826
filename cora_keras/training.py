"""Training: optimizer and schedule, callbacks, and the `model.fit` wiring.

The recipe (MODEL.md section 5) as Keras objects, usable on their own:

    config.model.vocab_size = len(train_split.vocabulary)
    prepare_run_dir("runs/demo", config, train_split.vocabulary, resume=False)
    encoder = GraphEncoder(train_split.vocabulary, config.model, config.augment)
    model = CoraModel(config.model, config.loss)
    model.build()
    steps_per_epoch = train_split.num_captions // config.train.batch_size
    compile_model(model, config.train, steps_per_epoch)
    model.fit(
        training_dataset(train_split, encoder, config, config.train.seed),
        epochs=config.train.epochs,
        callbacks=training_callbacks("runs/demo", dev_split, encoder, config),
    )

`train` does exactly that from files (the `cora-keras train` command). A
run directory holds:

    config.yaml        the resolved config (vocab_size from the dataset)
    vocab.json         a copy of the dataset's vocabulary
    bert_vocabulary.txt, bert_backbone.json
                       BERT runs: the WordPiece vocabulary and the backbone
                       kwargs (see `cora_keras.run`)
    best.weights.h5    weights of the epoch with the best dev RSUM
    best.json          that epoch and its RSUM (kept across resumes)
    last.weights.h5    weights after the latest epoch
    history.json       every epoch's logs and learning rate
    logs/              TensorBoard: train/ (loss terms, learning rate),
                       validation/ (R@K, RSUM, the dev similarity picture)
    backup/            Keras BackupAndRestore state for `--resume`

Weights and JSON files are written to a temporary name and renamed, so an
interruption never leaves a half-written file. In a data-parallel run of
several processes only the chief (`TrainingEngine.is_chief`) writes the
run directory; every process evaluates on dev, and on `--resume` every
process restores the chief's backup, so the directory must be visible to
all of them (a shared file system).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np
from keras import ops

from cora_keras.config import (
    Config,
    ConfigError,
    ModelConfig,
    TrainConfig,
    load_config,
    save_config,
)
from cora_keras.data.datasets import Split, load_split
from cora_keras.data.pipeline import TrainingBatches, training_dataset
from cora_keras.distribution import training_engine, without_distribution
from cora_keras.evaluation import (
    SplitEmbedder,
    backend_jit_compile,
    protocol_metrics,
    similarity_picture,
)
from cora_keras.model import CoraModel
from cora_keras.layers.phrase_encoder import preset_backbone_kwargs
from cora_keras.run import (
    BERT_BACKBONE_FILE,
    BERT_VOCABULARY_FILE,
    BEST_WEIGHTS_FILE,
    CONFIG_FILE,
    LAST_WEIGHTS_FILE,
    VOCAB_FILE,
)
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph import wordpiece
from cora_keras.scene_graph.vocabulary import Vocabulary

DEV_SPLIT = "dev"
MONITOR = "val_rsum"
RETRIEVAL_LOGS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
BEST_RECORD = "best.json"
HISTORY_FILE = "history.json"
LOG_DIR = "logs"
BACKUP_DIR = "backup"
PICTURE_TAG = "dev_similarity"
# Config keys a resumed run may change: how long it runs, and on how many
# devices (the global batch, hence the computation, stays the same).
RESUMABLE_CHANGES = ("train.epochs", "train.steps_per_epoch", "train.distribution")
_BACKUP_METADATA = "training_metadata.json"  # written by keras.callbacks.BackupAndRestore


class RunDirectoryError(ValueError):
    """The run directory does not fit the request (exists, or is not a run)."""


# ----------------------------------------------------------------- schedule


@keras.saving.register_keras_serializable(package="cora_keras")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then the rate times `decay_factor` at each boundary.

    At optimizer step s (0-based): `learning_rate * min(1, (s + 1) /
    warmup_steps) * decay_factor ** #{b in decay_steps : s >= b}`.

    Args:
        learning_rate: the base rate.
        warmup_steps: steps of the linear ramp (0 = none).
        decay_steps: steps at which the rate is multiplied by `decay_factor`.
        decay_factor: the multiplier at each decay step.
    """

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int = 0,
        decay_steps: Sequence[int] = (),
        decay_factor: float = 0.1,
    ) -> None:
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = [int(step) for step in decay_steps]
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.full((), self.learning_rate, "float32")
        if self.warmup_steps > 0:
            rate = rate * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        for boundary in self.decay_steps:
            rate = ops.where(step >= boundary, rate * self.decay_factor, rate)
        return rate

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": list(self.decay_steps),
            "decay_factor": self.decay_factor,
        }


def learning_rate_schedule(train: TrainConfig, steps_per_epoch: int) -> WarmupStepDecay:
    """The configured warm-up (in epochs) and step decay (at epochs) in steps."""
    return WarmupStepDecay(
        train.learning_rate,
        warmup_steps=round(train.warmup_epochs * steps_per_epoch),
        decay_steps=[epoch * steps_per_epoch for epoch in train.decay_epochs],
        decay_factor=train.decay_factor,
    )


# ---------------------------------------------------------------- optimizer


@keras.saving.register_keras_serializable(package="cora_keras")
class GroupAdamW(keras.optimizers.AdamW):
    """AdamW with a learning rate multiplier and weight decay per variable group.

    A group is a dict: `pattern` (a regular expression searched in
    `variable.path`), `learning_rate_multiplier` and `weight_decay` (None =
    the optimizer's). The first matching group applies; other variables get
    multiplier 1 and `weight_decay`. As in PyTorch's AdamW with parameter
    groups, a variable of rate `lr * m` and decay `wd` is updated by
    `v -= lr * m * wd * v` followed by the Adam step at rate `lr * m`.

    Args:
        groups: the variable groups.
        **kwargs: `keras.optimizers.AdamW` arguments.
    """

    def __init__(self, groups: Sequence[dict] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = tuple(_check_group(group, index) for index, group in enumerate(groups))
        self._patterns = tuple(re.compile(group["pattern"]) for group in self.groups)

    def group_of(self, variable) -> Optional[int]:
        """Index of the group `variable` belongs to, None when it is in none."""
        for index, pattern in enumerate(self._patterns):
            if pattern.search(variable.path):
                return index
        return None

    def build(self, var_list) -> None:
        if self.built:
            return
        super().build(var_list)
        settings = []
        for variable in var_list:
            index = self.group_of(variable)
            group = {} if index is None else self.groups[index]
            decay = group.get("weight_decay")
            settings.append(
                (group.get("learning_rate_multiplier", 1.0), self.weight_decay if decay is None else decay)
            )
        self._settings = tuple(settings)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._settings[self._get_variable_index(variable)][0]
        super().update_step(gradient, variable, learning_rate * multiplier)

    def _apply_weight_decay(self, variables) -> None:
        learning_rate = self.learning_rate
        for variable in variables:
            multiplier, decay = self._settings[self._get_variable_index(variable)]
            if decay and self._use_weight_decay(variable):
                rate = ops.cast(learning_rate * (multiplier * decay), variable.dtype)
                self.assign_sub(variable, variable * rate)

    def get_config(self) -> dict:
        config = super().get_config()
        config["groups"] = [dict(group) for group in self.groups]
        return config


def _check_group(group: Any, index: int) -> dict:
    if not isinstance(group, dict) or not isinstance(group.get("pattern"), str):
        raise ValueError(f"GroupAdamW groups[{index}]: expected a dict with a 'pattern' string")
    unknown = sorted(set(group) - {"pattern", "learning_rate_multiplier", "weight_decay"})
    if unknown:
        raise ValueError(
            f"GroupAdamW groups[{index}].{unknown[0]}: unknown key; allowed: "
            "pattern, learning_rate_multiplier, weight_decay"
        )
    return {
        "pattern": group["pattern"],
        "learning_rate_multiplier": float(group.get("learning_rate_multiplier", 1.0)),
        "weight_decay": None if group.get("weight_decay") is None else float(group["weight_decay"]),
    }


def parameter_groups(model: CoraModel, train: TrainConfig) -> list[dict]:
    """The optimizer groups of the release: image tower, word embeddings, BERT.

    Each group's pattern matches exactly the paths of its variables (the
    BERT backbone's variable paths do not carry the model's prefix).
    """
    phrase_encoder = model.phrase_encoder
    groups = [
        (model.region_encoder, train.image_learning_rate_multiplier, None),
    ]
    if phrase_encoder.text_encoder == "bert":
        groups.append(
            (phrase_encoder.bert, train.bert_learning_rate_multiplier, train.bert_weight_decay)
        )
    else:
        groups.append((phrase_encoder.word_embeddings, train.word_learning_rate_multiplier, None))
    return [
        {
            "pattern": _exact_paths(layer.trainable_variables),
            "learning_rate_multiplier": multiplier,
            "weight_decay": decay,
        }
        for layer, multiplier, decay in groups
    ]


def _exact_paths(variables) -> str:
    return "^(?:" + "|".join(re.escape(v.path) for v in variables) + ")$"


def build_optimizer(model: CoraModel, train: TrainConfig, steps_per_epoch: int) -> GroupAdamW:
    """AdamW with the configured schedule, weight decay and parameter groups."""
    return GroupAdamW(
        parameter_groups(model, train),
        learning_rate=learning_rate_schedule(train, steps_per_epoch),
        weight_decay=train.weight_decay,
    )


def compile_model(model: CoraModel, train: TrainConfig, steps_per_epoch: int) -> None:
    """Compile with `build_optimizer`: XLA on JAX only (see `backend_jit_compile`),
    no compilation at all with `train.run_eagerly`."""
    model.compile(
        optimizer=build_optimizer(model, train, steps_per_epoch),
        jit_compile=backend_jit_compile() and not train.run_eagerly,
        run_eagerly=train.run_eagerly,
    )


# ---------------------------------------------------------------- callbacks


class TripletWarmup(keras.callbacks.Callback):
    """Sum the triplet term over all negatives for the first `epochs` epochs,
    then take the hardest (sets `CoraModel.hardest_negatives` per epoch).

    Args:
        epochs: warm-up epochs (`loss.triplet_warmup_epochs`).
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.hardest_negatives.assign(1.0 if epoch >= self.epochs else 0.0)


class RetrievalEvaluation(keras.callbacks.Callback):
    """Dev retrieval after every epoch: R@1/5/10 both ways and RSUM in the logs.

    Adds `val_i2t_r1` ... `val_t2i_r10` and `val_rsum` (the first protocol
    of `protocol_metrics` for the split) to the epoch logs, so later
    callbacks (checkpoints, TensorBoard, the progress bar) see them. With
    `picture_dir`, also writes `similarity_picture` of the dev split to
    TensorBoard there, under the tag `dev_similarity`.

    Args:
        split: the dev split.
        encoder: its graph encoder (not sampling).
        config: the run's config.
        picture_dir: TensorBoard directory for the picture, or None.
    """

    def __init__(
        self,
        split: Split,
        encoder: GraphEncoder,
        config: Config,
        picture_dir: Optional[str | os.PathLike] = None,
    ) -> None:
        super().__init__()
        self.split = split
        self.encoder = encoder
        self.config = config
        self.picture_dir = None if picture_dir is None else os.fspath(picture_dir)
        self._embedder: Optional[SplitEmbedder] = None
        self._writer = None

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._embedder is None:
            self._embedder = SplitEmbedder(self.model, self.config)
        embeddings = self._embedder.embed(self.split, self.encoder)
        results = protocol_metrics(self.config.data.dataset, embeddings.images, embeddings.captions)
        metrics = next(iter(results.values())).as_dict()
        if logs is not None:
            logs.update((f"val_{name}", metrics[name]) for name in RETRIEVAL_LOGS)
        if self.picture_dir is not None:
            self._write_picture(epoch, similarity_picture(embeddings.images, embeddings.captions))

    def _write_picture(self, epoch: int, picture: np.ndarray) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.picture_dir)
        with self._writer.as_default():
            tf.summary.image(
                PICTURE_TAG,
                picture[None],
                step=epoch,
                description="Dev similarities: rows the first 50 images, columns their "
                "captions (5 each); yellow = similar; red frames = each image's own captions.",
            )
        self._writer.flush()

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunCheckpoints(keras.callbacks.Callback):
    """last.weights.h5 every epoch; best.weights.h5 when `monitor` rises.

    Files are written atomically. The best value so far is kept in
    `best.json`, read back when training starts, so a resumed run only
    replaces the best weights with better ones.

    Args:
        run_dir: the run directory.
        monitor: the epoch log to maximise.
    """

    def __init__(self, run_dir: str | os.PathLike, monitor: str = MONITOR) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.best = -math.inf

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        record = self.run_dir / BEST_RECORD
        self.best = json.loads(record.read_text())[self.monitor] if record.is_file() else -math.inf

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"RunCheckpoints: the epoch logs have no {self.monitor!r} (logs: "
                f"{', '.join(logs)}); put RetrievalEvaluation before RunCheckpoints"
            )
        with without_distribution():
            save_weights_atomically(self.model, self.run_dir / LAST_WEIGHTS_FILE)
            value = float(logs[self.monitor])
            if value > self.best:
                self.best = value
                save_weights_atomically(self.model, self.run_dir / BEST_WEIGHTS_FILE)
                write_json_atomically(self.run_dir / BEST_RECORD, {"epoch": epoch, self.monitor: value})


class HistoryFile(keras.callbacks.Callback):
    """Writes every epoch's logs and learning rate to a JSON list, atomically.

    Entries are `{"epoch": e, "learning_rate": lr, **logs}`; a resumed run
    keeps the entries of the epochs before the one it restarts at.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.records: list[dict] = []

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.records = json.loads(self.path.read_text()) if self.path.is_file() else []

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        record = {"epoch": epoch, "learning_rate": _current_learning_rate(self.model)}
        record.update((name, float(value)) for name, value in (logs or {}).items())
        self.records = [r for r in self.records if r["epoch"] < epoch] + [record]
        write_json_atomically(self.path, self.records)


def _current_learning_rate(model: keras.Model) -> float:
    return float(ops.convert_to_numpy(model.optimizer.learning_rate))


class RunBackup(keras.callbacks.BackupAndRestore):
    """Keras BackupAndRestore of a run, kept after training: restores the
    backup in `backup_dir` when training starts; saves it after every epoch
    when `writes` (a process of a cluster other than the chief saves
    nothing and resumes from the chief's backup).
    """

    def __init__(self, backup_dir: str | os.PathLike, writes: bool = True) -> None:
        super().__init__(os.fspath(backup_dir), delete_checkpoint=False)
        self.writes = writes

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self.writes:
            with without_distribution():
                super().on_epoch_end(epoch, logs)


def training_callbacks(
    run_dir: str | os.PathLike,
    dev_split: Split,
    encoder: GraphEncoder,
    config: Config,
    chief: bool = True,
) -> list[keras.callbacks.Callback]:
    """Triplet warm-up, dev evaluation, checkpoints, history, TensorBoard and
    backup, in that order.

    The order matters: checkpoints and logs read what the evaluation adds,
    and the backup (what `--resume` restarts from) is written last. A
    process of a cluster that is not the `chief` writes nothing: it gets
    the same evaluation, without the picture, and restores the backup.
    """
    run_dir = Path(run_dir)
    logs = run_dir / LOG_DIR
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        writers = [
            RunCheckpoints(run_dir),
            HistoryFile(run_dir / HISTORY_FILE),
            keras.callbacks.TensorBoard(log_dir=os.fspath(logs), write_graph=False),
            RunBackup(run_dir / BACKUP_DIR),
        ]
    else:
        writers = [RunBackup(run_dir / BACKUP_DIR, writes=False)]
    return [
        TripletWarmup(config.loss.triplet_warmup_epochs),
        RetrievalEvaluation(
            dev_split, encoder, config, picture_dir=logs / "validation" if chief else None
        ),
        *writers,
    ]


# ------------------------------------------------------------------- files


def save_weights_atomically(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save_weights` to a temporary file in the same folder, then rename."""
    path = Path(path)
    suffix = ".weights.h5"
    if not path.name.endswith(suffix):
        raise ValueError(f"{path}: weights files must end in {suffix}")
    tmp = path.with_name(f"{path.name[: -len(suffix)]}.tmp-{os.getpid()}{suffix}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def write_json_atomically(path: str | os.PathLike, data: Any) -> None:
    """JSON to a temporary file in the same folder, then rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _save_config_atomically(config: Config, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_config(config, tmp)
    os.replace(tmp, path)


def _backed_up_epoch(run_dir: Path) -> int:
    """The epoch BackupAndRestore will restart at (0 without a backup)."""
    metadata = run_dir / BACKUP_DIR / _BACKUP_METADATA
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.is_file() else 0


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    return [] if a == b else [path]


# ------------------------------------------------------------------- train


def run_config(
    config_path: Optional[str | os.PathLike],
    run_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    resume: bool = False,
    distribution: Optional[str] = None,
) -> Config:
    """The config of a `train` command: the file, `--set` overrides, then
    `--epochs`, `--steps-per-epoch` and `--distribution`. On resume without
    a file, the run's own `config.yaml`."""
    if config_path is None:
        if not resume:
            raise ConfigError("--config is required unless --resume continues a run")
        config_path = Path(run_dir) / CONFIG_FILE
        if not config_path.is_file():
            raise RunDirectoryError(f"{config_path}: not found; {run_dir} is not a training run")
    extra = [*overrides]
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    if steps_per_epoch is not None:
        extra.append(f"train.steps_per_epoch={steps_per_epoch}")
    if distribution is not None:
        extra.append(f"train.distribution={distribution}")
    return load_config(config_path, extra)


def prepare_run_dir(
    run_dir: str | os.PathLike, config: Config, vocabulary: Vocabulary, resume: bool
) -> None:
    """`check_run_dir`, then create the run directory and write config.yaml,
    vocab.json and, for BERT, the text side (`write_bert_files`)."""
    check_run_dir(run_dir, config, vocabulary, resume)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config_atomically(config, run_dir / CONFIG_FILE)
    vocabulary.save(run_dir / VOCAB_FILE)
    if config.model.text_encoder == "bert":
        write_bert_files(run_dir, config.model)


def write_bert_files(run_dir: str | os.PathLike, model: ModelConfig) -> None:
    """bert_vocabulary.txt and bert_backbone.json of a BERT run: its WordPiece
    vocabulary and the kwargs of its backbone (of `model.bert_preset` when
    set), so evaluation, search and export need no preset directory."""
    run_dir = Path(run_dir)
    wordpiece.for_model(model).save(run_dir / BERT_VOCABULARY_FILE)
    if model.bert_preset is not None:
        backbone = preset_backbone_kwargs(model.bert_preset)
    else:
        backbone = model.bert_backbone
    write_json_atomically(run_dir / BERT_BACKBONE_FILE, backbone)


def check_run_dir(
    run_dir: str | os.PathLike, config: Config, vocabulary: Vocabulary, resume: bool
) -> None:
    """Raise RunDirectoryError unless the run directory fits the request;
    reads only.

    A fresh run needs a missing or empty directory. A resumed run needs the
    directory's `config.yaml` to equal `config` except for
    `RESUMABLE_CHANGES` (the differing keys are named otherwise) and its
    `vocab.json` to equal `vocabulary`.
    """
    run_dir = Path(run_dir)
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise RunDirectoryError(f"{saved}: not found; {run_dir} is not a run to resume")
        differing = [
            key
            for key in _differences(load_config(saved).to_dict(), config.to_dict())
            if key not in RESUMABLE_CHANGES
        ]
        if differing:
            raise RunDirectoryError(
                f"{saved}: the run was trained with other values of {', '.join(differing)}; "
                f"only {', '.join(RESUMABLE_CHANGES)} may change on --resume"
            )
        if Vocabulary.load(run_dir / VOCAB_FILE) != vocabulary:
            raise RunDirectoryError(
                f"{run_dir / VOCAB_FILE}: differs from the dataset's vocabulary; "
                "the run was trained on other data"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirectoryError(
            f"{run_dir}: exists and is not empty; pass --resume to continue it or choose another --out"
        )


def train(
    config: Config,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    verbose: str | int = "auto",
) -> keras.callbacks.History:
    """Train CORA on the dataset in `data_dir` into `run_dir` (see the module doc).

    `model.vocab_size` is set from the dataset's vocabulary. With `resume`,
    training continues from the run's backup (weights, optimizer state and
    epoch). `train.distribution` selects the data-parallel engine
    (`cora_keras.distribution`); in a cluster of processes only the chief
    writes `run_dir`. Returns the History of this call (`history.model` is
    the model).
    """
    run_dir = Path(run_dir)
    train_split = load_split(data_dir, "train", config)
    vocabulary = train_split.vocabulary
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, vocab_size=len(vocabulary))
    )
    # Every process checks the directory before its engine joins the cluster,
    # which waits for all processes: none has written there yet.
    check_run_dir(run_dir, config, vocabulary, resume)
    engine = training_engine(config.train.distribution)
    engine.check_batch_sizes(config.train)
    if engine.is_chief:
        prepare_run_dir(run_dir, config, vocabulary, resume)
    dev_split = load_split(data_dir, DEV_SPLIT, config)
    encoder = GraphEncoder(vocabulary, config.model, config.augment)
    batches = TrainingBatches(train_split, encoder, config, config.train.seed)
    steps_per_epoch = config.train.steps_per_epoch or batches.steps_per_epoch

    keras.utils.set_random_seed(config.train.seed)
    first_epoch = _backed_up_epoch(run_dir)
    with engine.scope():
        model = CoraModel(config.model, config.loss)
        model.build()
        compile_model(model, config.train, steps_per_epoch)
    engine.prepare_fit(model)
    dataset = engine.distribute(
        lambda shard, endless: training_dataset(
            train_split, encoder, config, config.train.seed,
            first_epoch=first_epoch, shard=shard, endless=endless,
        )
    )
    with engine.fit_scope():
        return model.fit(
            dataset,
            epochs=config.train.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=training_callbacks(run_dir, dev_split, encoder, config, engine.is_chief),
            shuffle=False,  # the dataset orders each epoch itself
            verbose=verbose,
        )
