"""PhraseEncoder (MODEL.md 2.1): one GRU per phrase kind over the real tokens."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.phrase_encoder import PHRASE_KINDS, PhraseEncoder
from tests.helpers import assert_config_round_trip, gru_weights, numpy64, randomize_weights
from tests.reference_cora import gru_sequence

VOCAB, WORD = 20, 6
TOKENS = np.array([[2, 7, 3, 0, 0], [2, 9, 11, 4, 3], [2, 3, 0, 0, 0]], np.int32)


@pytest.fixture(scope="module")
def encoder() -> PhraseEncoder:
    layer = PhraseEncoder(VOCAB, WORD)
    layer.build()
    randomize_weights(layer, seed=0)
    return layer


def _embedded(encoder: PhraseEncoder) -> np.ndarray:
    return numpy64(encoder.word_embeddings.embeddings)[TOKENS]


@pytest.mark.parametrize("kind", PHRASE_KINDS)
def test_gru_reads_each_phrase_to_its_last_token(encoder: PhraseEncoder, kind: str) -> None:
    lengths = (TOKENS != 0).sum(1)
    _, expected = gru_sequence(_embedded(encoder), lengths, gru_weights(encoder.grus[kind]))
    np.testing.assert_allclose(numpy64(encoder(TOKENS, kind=kind)), expected, atol=1e-5)


def test_phrase_kinds_have_their_own_gru(encoder: PhraseEncoder) -> None:
    outputs = [numpy64(encoder(TOKENS, kind=kind)) for kind in PHRASE_KINDS]
    assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])


def test_bag_of_words_is_the_mean_real_embedding() -> None:
    encoder = PhraseEncoder(VOCAB, WORD, text_encoder="bow")
    encoder.build()
    table = numpy64(encoder.word_embeddings.embeddings)
    expected = [table[row[row != 0]].mean(0) for row in TOKENS]
    np.testing.assert_allclose(numpy64(encoder(TOKENS, kind="object")), expected, atol=1e-6)


def test_unknown_text_encoder_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="text_encoder='lstm'; allowed: gru, bert, bow"):
        PhraseEncoder(VOCAB, WORD, text_encoder="lstm")


def test_bert_needs_a_preset_or_backbone_kwargs() -> None:
    with pytest.raises(ValueError, match="model.bert_preset or model.bert_backbone"):
        PhraseEncoder(VOCAB, WORD, text_encoder="bert")


def test_bert_preset_must_be_a_local_directory(tmp_path) -> None:
    missing = str(tmp_path / "no_such_preset")
    with pytest.raises(FileNotFoundError, match="no_such_preset.*never downloads"):
        PhraseEncoder(VOCAB, WORD, text_encoder="bert", bert_preset=missing)


def test_config_round_trip(encoder: PhraseEncoder) -> None:
    assert_config_round_trip(encoder, lambda layer: layer(TOKENS, kind="attribute"))
