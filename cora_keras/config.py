"""One typed config tree for model, objective, data sampling and training.

YAML files in `configs/` map onto `Config`; unknown or ill-typed keys fail
with the key's dotted path and what is allowed. Overrides use the same
paths: `apply_overrides(config, ["train.batch_size=64"])`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


# The data-parallel engines of `train.distribution` (cora_keras/distribution.py).
DISTRIBUTIONS = ("none", "data_parallel", "mirrored", "multi_worker_mirrored")


class ConfigError(ValueError):
    """A config file or override names an unknown key or a wrong value."""


@dataclass
class ModelConfig:
    """Shapes and layers of CoraModel (MODEL.md notation in comments)."""

    embed_size: int = 1024  # D
    composer_hidden: int = 1024  # H
    word_dim: int = 300  # W
    vocab_size: int = 8000
    text_encoder: Literal["gru", "bert", "bow"] = "gru"
    bert_preset: Optional[str] = None  # local keras_hub preset directory
    bert_backbone: Optional[dict] = None  # BertBackbone kwargs (random init)
    # WordPiece vocabulary file (one token per line) for a BERT built from
    # bert_backbone; a bert_preset brings its own.
    bert_vocabulary: Optional[str] = None
    region_feature_size: int = 2048  # F
    num_regions: int = 36  # N
    max_entities: int = 13  # E
    max_attributes: int = 4  # A
    max_relations: int = 13  # R, per entity and direction
    max_caption_relations: int = 24  # relation slots per caption
    max_phrase_tokens: int = 8  # [CLS] w1 .. wk [SEP]
    # Real phrases per caption, batch average, that the text tower encodes
    # (Flickr30K test graphs: 3.44 +- 1.37 entities, 1.42 +- 1.28
    # attributes, 2.24 +- 1.47 relations per caption).
    entity_budget: float = 4.5
    attribute_budget: float = 3.0
    relation_budget: float = 3.5
    # Share of the B x N region rows the image tower computes (valid rows
    # packed first) in training; 1.0 computes every row. Region dropout
    # 0.35 keeps ~65% of the rows, so the paper configs' 0.85 skips most
    # padding safely. Evaluation always computes every valid row.
    region_budget: float = 1.0
    # Training only: encode each distinct phrase of a kind once per batch,
    # in a static budget of this share of the kind's phrase budget (null:
    # encode every phrase). Exact for the GRU; with BERT, copies of a phrase
    # share one dropout draw. Demo batches repeat a few dozen phrases.
    distinct_phrase_budget: Optional[float] = None
    entity_layers: int = 1
    relation_layers: int = 2
    num_heads: int = 16
    use_graph_global: bool = False
    graph_layer: Literal["cora", "spektral_gat"] = "cora"
    region_dropout: float = 0.1
    word_dropout: float = 0.1
    composer_dropout: float = 0.15
    relation_attention_dropout: float = 0.05
    gpo_hidden: int = 32
    # Width of the image tower's pairwise relation features (0: off, the
    # paper's tower). Each ordered pair (i, j) of the region_pair_regions
    # regions a learned gate rates highest gives ReLU(U r_i + V r_j + b);
    # their gate-weighted mean, projected to D, is added to the pooled
    # image embedding, so "which object stands where relative to which"
    # can survive pooling (layers/region_encoder.py).
    region_pair_size: int = 0
    region_pair_regions: int = 12
    # Spatial binding axes (0: off, the paper's model). With K > 0 both
    # embeddings gain K*D dimensions whose dot product scores a caption's
    # relations against where the image's regions read out their entities
    # (layers/spatial_binding.py): image and caption embeddings are then
    # (1 + K) * D wide, the main D dimensions unit length. The binding
    # trains without touching the towers: the contrastive term scores the
    # main dimensions alone and the whole score with them held fixed
    # (losses.bound_contrastive_loss).
    binding_axes: int = 0
    binding_hidden: int = 64


@dataclass
class LossConfig:
    """Weights, margins and temperature of the three-term objective."""

    temperature: float = 0.01
    triplet_margin: float = 0.35
    specificity_margin: float = 0.35
    contrastive_weight: float = 1.0
    triplet_weight: float = 4.0
    specificity_weight: float = 11.0
    # Epochs at the start of training whose triplet term sums over all
    # negatives instead of taking the hardest (VSE-infinity's warm-up).
    triplet_warmup_epochs: int = 0
    # Relation-swap term: each training caption with an asymmetric relation
    # between differently described entities is also composed with that
    # relation's subject and object exchanged, and its image must score
    # the caption above the swap (-log of the two-way softmax at
    # `temperature`). 0 turns it off (the paper's objective).
    relation_swap_weight: float = 0.0
    # Predicates that read the same both ways: their relations are never swapped.
    symmetric_predicates: list[str] = field(
        default_factory=lambda: ["next to", "near", "beside", "by", "with", "and", "along", "alongside"]
    )
    # Region-entity term: each caption entity's best-matching region row
    # in its own image must beat the best row of every other image of the
    # batch (softmax at this temperature). It teaches regions which entity
    # they show, which a relation read-out needs. 0 turns it off.
    region_entity_weight: float = 0.0
    region_entity_temperature: float = 0.05
    # Relation read-out term (with model.binding_axes > 0): each training
    # relation's predicate read-out times the difference of its two
    # entities' coordinates, each taken from the image's rows weighted by
    # softmax(row . entity / temperature), must be positive (softplus).
    # It trains the binding where its own dot product gives no signal. 0: off.
    relation_readout_weight: float = 0.0
    relation_readout_temperature: float = 0.05


@dataclass
class AugmentConfig:
    """Training-time sampling probabilities (DATA.md section 3)."""

    entity_drop: float = 0.05
    attribute_drop: float = 0.15
    adverb_drop: float = 0.15
    singularize: float = 0.125
    pluralize: float = 0.10
    token_mask: float = 0.10
    token_delete: float = 0.05
    relation_drop: float = 0.15
    region_drop: float = 0.35


@dataclass
class DataConfig:
    """Which dataset protocol and how the input pipeline reads it."""

    dataset: Literal["f30k", "coco", "demo"] = "f30k"
    features: Literal["precomp", "per_image"] = "precomp"
    vocab_min_count: int = 1
    # Scene-graph parser processes when a split's captions are not parsed
    # yet; above 1 they are spawned, so a script that trains needs the
    # `if __name__ == "__main__":` guard.
    parse_processes: int = 1
    shuffle_buffer: int = 10000
    parallel_calls: int = 2


@dataclass
class TrainConfig:
    """Optimizer, schedule and loop settings (MODEL.md section 5)."""

    batch_size: int = 128
    epochs: int = 55
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    image_learning_rate_multiplier: float = 1.0  # image tower (release: lr_img)
    word_learning_rate_multiplier: float = 1.0  # word embeddings (release: lr_word)
    bert_learning_rate_multiplier: float = 0.1
    bert_weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    decay_epochs: list[int] = field(default_factory=lambda: [15])
    decay_factor: float = 0.1
    seed: int = 0
    steps_per_epoch: Optional[int] = None
    # Captions of one image per batch: batch_size / k images, each encoded
    # once for its k captions (k > 1 cuts the image tower's cost by k). An
    # epoch still visits every caption (data/pipeline.py); 1 = the paper's
    # independent caption sampling.
    captions_per_image: int = 1
    eval_batch_size: int = 128
    run_eagerly: bool = False  # no graph compilation: debugging and tiny runs
    # Data-parallel engine (cora_keras/distribution.py); batch_size is the
    # global batch over all devices and hosts.
    distribution: Literal[DISTRIBUTIONS] = "none"


@dataclass
class Config:
    """The whole configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it typed."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is typing.Union:
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise ConfigError(f"{path}: {value!r} is not {_describe(tp)}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed: {', '.join(names)}")
    kwargs = {
        key: _coerce(value, hints[key], f"{path}.{key}" if path else key)
        for key, value in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Build a validated Config from nested mappings."""
    return _build(Config, data, "")


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read a YAML config, then apply `section.key=value` overrides."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{os.fspath(path)}: invalid YAML ({error})") from None
    try:
        config = config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{os.fspath(path)}: {error}") from None
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a copy with each `dotted.key=yaml_value` override applied."""
    data = config.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        *parents, leaf = key.strip().split(".")
        node = data
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(
                    f"{'.'.join(parents[: i + 1])}: unknown section; "
                    f"allowed: {', '.join(k for k, v in node.items() if isinstance(v, dict))}"
                )
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return config_from_dict(data)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the config as YAML."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
