"""A training run directory, read back: config, model with weights, vocabulary.

Layout (written by training): `config.yaml` (the whole `Config`),
`vocab.json` (the `Vocabulary` the captions were encoded with),
`best.weights.h5` (best dev RSUM) and `last.weights.h5` (end of the last
epoch). Readers take the best weights when present, else the last.

A BERT run also holds its text side, so it needs no preset directory
after training: `bert_vocabulary.txt` (the WordPiece vocabulary) and
`bert_backbone.json` (the BertBackbone kwargs; the backbone's weights are
in the weights files). `load_run_config` points the config at them.
Keras is imported only by `load_run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cora_keras.config import Config, load_config
from cora_keras.scene_graph.vocabulary import Vocabulary

if TYPE_CHECKING:
    from cora_keras.model import CoraModel

CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocab.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
LAST_WEIGHTS_FILE = "last.weights.h5"
BERT_VOCABULARY_FILE = "bert_vocabulary.txt"
BERT_BACKBONE_FILE = "bert_backbone.json"
BERT_FILES = (BERT_VOCABULARY_FILE, BERT_BACKBONE_FILE)


class RunError(ValueError):
    """A run directory lacks a file or its files disagree."""


def weights_path(run_dir: str | os.PathLike) -> Path:
    """`best.weights.h5` of the run, else `last.weights.h5`."""
    run_dir = Path(run_dir)
    for name in (BEST_WEIGHTS_FILE, LAST_WEIGHTS_FILE):
        if (run_dir / name).is_file():
            return run_dir / name
    raise RunError(
        f"{run_dir}: no weights file ({BEST_WEIGHTS_FILE} or {LAST_WEIGHTS_FILE})"
    )


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The run's `config.yaml`; for BERT, `model` rebuilds the backbone from
    `bert_backbone.json` (no `bert_preset`) and tokenises with
    `bert_vocabulary.txt`, both in `run_dir`. Also reads an export's
    `assets.extra/`. A BERT run written without these copies keeps its
    preset paths."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    vocabulary = run_dir / BERT_VOCABULARY_FILE
    if config.model.text_encoder != "bert" or not vocabulary.is_file():
        return config
    backbone = json.loads((run_dir / BERT_BACKBONE_FILE).read_text(encoding="utf-8"))
    model = dataclasses.replace(
        config.model, bert_preset=None, bert_backbone=backbone, bert_vocabulary=str(vocabulary)
    )
    return dataclasses.replace(config, model=model)


def load_run(run_dir: str | os.PathLike) -> tuple[Config, CoraModel, Vocabulary]:
    """The run's config (`load_run_config`), its model with the run's
    weights, and its vocabulary."""
    from cora_keras.model import CoraModel

    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, VOCAB_FILE):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir / name}: file not found (is {run_dir} a run directory?)")
    weights = weights_path(run_dir)
    config = load_run_config(run_dir)
    vocabulary = Vocabulary.load(run_dir / VOCAB_FILE)
    if len(vocabulary) > config.model.vocab_size:
        raise RunError(
            f"{run_dir / VOCAB_FILE} holds {len(vocabulary)} words but "
            f"{run_dir / CONFIG_FILE} has model.vocab_size = {config.model.vocab_size}"
        )
    model = CoraModel(config.model, config.loss)
    model.build()
    model.load_weights(weights)
    return config, model, vocabulary
