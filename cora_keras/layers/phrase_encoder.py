"""Phrase encoder: token ids of one phrase kind -> one vector per phrase."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
from keras import ops

from cora_keras.layers.gru import LengthMaskedGRU

PHRASE_KINDS = ("object", "attribute", "predicate")
PRESET_CONFIG_FILE = "config.json"  # a keras_hub preset's serialized backbone


@keras.saving.register_keras_serializable(package="cora_keras")
class PhraseEncoder(keras.layers.Layer):
    """Encodes packed phrases (P, T) of token ids (0 = padding) (MODEL.md 2.1).

    `gru`: one shared word embedding table (V, W) and a separate
    PyTorch-form GRU per phrase kind (object names, attributes,
    predicates), returning the state after the phrase's last token.
    `bert`: a keras_hub BertBackbone shared by all kinds, mean-pooled over
    non-padding tokens; built from `bert_backbone` kwargs (random init) or
    loaded from the local preset directory `bert_preset` (never downloaded).
    `bow`: the mean of the phrase's word embeddings (the ablation).

    Args:
        vocab_size: V (ignored for `bert`).
        word_dim: W.
        text_encoder: "gru", "bert" or "bow".
        bert_preset: local keras_hub preset directory.
        bert_backbone: BertBackbone constructor kwargs.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        text_encoder: str = "gru",
        bert_preset: str | None = None,
        bert_backbone: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if text_encoder not in ("gru", "bert", "bow"):
            raise ValueError(f"text_encoder={text_encoder!r}; allowed: gru, bert, bow")
        self.vocab_size = vocab_size
        self.word_dim = word_dim
        self.text_encoder = text_encoder
        self.bert_preset = bert_preset
        self.bert_backbone = bert_backbone
        if text_encoder == "bert":
            self.bert = _make_bert(bert_preset, bert_backbone)
        else:
            self.word_embeddings = keras.layers.Embedding(
                vocab_size, word_dim, name="word_embeddings"
            )
        if text_encoder == "gru":
            self.grus = {
                kind: LengthMaskedGRU(word_dim, name=f"{kind}_gru") for kind in PHRASE_KINDS
            }

    @property
    def output_dim(self) -> int:
        return self.bert.hidden_dim if self.text_encoder == "bert" else self.word_dim

    def build(self, tokens_shape=None):
        if self.text_encoder != "bert":
            self.word_embeddings.build((None, None))
        if self.text_encoder == "gru":
            for gru in self.grus.values():
                gru.build((None, None, self.word_dim))

    def call(self, tokens, kind: str):
        """tokens (P, T) int -> (P, output_dim)."""
        mask = ops.cast(tokens != 0, "float32")
        if self.text_encoder == "bert":
            hidden = self.bert(
                {
                    "token_ids": tokens,
                    "segment_ids": ops.zeros_like(tokens),
                    "padding_mask": tokens != 0,
                }
            )["sequence_output"]
            return _masked_mean(hidden, mask)
        embedded = self.word_embeddings(tokens)
        if self.text_encoder == "bow":
            return _masked_mean(embedded, mask)
        lengths = ops.cast(ops.sum(mask, axis=1), "int32")
        return self.grus[kind](embedded, lengths)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            word_dim=self.word_dim,
            text_encoder=self.text_encoder,
            bert_preset=self.bert_preset,
            bert_backbone=self.bert_backbone,
        )
        return config


def _masked_mean(values, mask):
    total = ops.sum(values * mask[:, :, None], axis=1)
    return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)


def _make_bert(preset: str | None, backbone_kwargs: dict | None):
    """A BertBackbone from a local preset directory or from kwargs."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError("text_encoder 'bert' needs keras-hub: pip install keras-hub") from error
    if preset is not None:
        if not os.path.isdir(preset):
            raise FileNotFoundError(
                f"bert_preset {preset!r} is not a local directory; cora_keras never "
                "downloads weights: download the preset once and give its path"
            )
        return keras_hub.models.BertBackbone.from_preset(preset, name="bert")
    if not backbone_kwargs:
        raise ValueError("text_encoder 'bert' needs model.bert_preset or model.bert_backbone")
    return keras_hub.models.BertBackbone(**backbone_kwargs, name="bert")


def preset_backbone_kwargs(preset: str | os.PathLike) -> dict:
    """BertBackbone kwargs of a local keras_hub preset's architecture (its
    `config.json`): `BertBackbone(**kwargs)` is the preset's BERT without
    its weights. The dtype policy becomes its name."""
    path = Path(preset) / PRESET_CONFIG_FILE
    with open(path, encoding="utf-8") as f:
        serialized = json.load(f)
    if serialized.get("class_name") != "BertBackbone":
        raise ValueError(
            f"{path}: a {serialized.get('class_name')!r}, not a BertBackbone preset"
        )
    kwargs = {k: v for k, v in serialized["config"].items() if k not in ("name", "trainable")}
    dtype = kwargs.get("dtype")
    if isinstance(dtype, dict):
        if dtype.get("class_name") != "DTypePolicy":
            raise ValueError(
                f"{path}: dtype {dtype.get('class_name')!r}; only a plain DTypePolicy "
                "is supported"
            )
        kwargs["dtype"] = dtype["config"]["name"]
    return kwargs
