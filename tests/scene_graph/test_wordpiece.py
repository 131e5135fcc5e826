"""BERT WordPiece tokenisation of phrases: hand-checked ids, sampling on words, sources."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cora_keras.config import AugmentConfig, ModelConfig
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary, VocabularyError
from cora_keras.scene_graph.wordpiece import PRESET_VOCABULARY, WordPieceVocabulary

# Special tokens away from their usual ids, to show they are read from the file.
TOKENS = [
    "[PAD]", "red", "man", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "shirt",
    "t", "dog", "##s", "cafe", "very", "tall", "on", "and", "with", "un", "##believ",
    "##able", "hold",
]
RED, MAN, UNK, CLS, SEP, MASK = 1, 2, 3, 4, 5, 6
PLAYING, DOGS, HOLDING, UNBELIEVABLE = (7, 8), (11, 12), (22, 8), (19, 20, 21)
NO_SAMPLING = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)})


@pytest.fixture
def vocabulary_file(tmp_path):
    path = tmp_path / "vocabulary.txt"
    path.write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    return path


def scene_vocabulary() -> Vocabulary:
    words = "red man dog dogs very tall playing".split()
    return Vocabulary([*SPECIAL_TOKENS, *words], {"dogs": "dog"}, {"dog": "dogs"}, ["very"])


def bert_model(path, max_phrase_tokens=6) -> ModelConfig:
    return ModelConfig(text_encoder="bert", bert_vocabulary=str(path), max_entities=3,
                        max_attributes=2, max_caption_relations=2,
                        max_phrase_tokens=max_phrase_tokens)


def bert_encoder(path, augment=NO_SAMPLING, max_phrase_tokens=6) -> GraphEncoder:
    return GraphEncoder(scene_vocabulary(), bert_model(path, max_phrase_tokens), augment)


def one_entity(name: str, attributes=()) -> SceneGraph:
    return SceneGraph("caption", [Entity(name, list(attributes))])


def row(*ids, length=6) -> list[int]:
    return [CLS, *ids, SEP] + [0] * (length - len(ids) - 2)


def test_words_split_greedily_into_the_longest_pieces(vocabulary_file):
    vocab = WordPieceVocabulary.load(vocabulary_file)
    assert (vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (UNK, CLS, SEP, MASK)
    assert vocab.pieces("playing") == PLAYING
    assert vocab.pieces("unbelievable") == UNBELIEVABLE
    assert vocab.pieces("café") == (13,)  # accents stripped, as BERT uncased does
    assert vocab.pieces("zebra") == (UNK,)
    assert vocab.pieces("playx") == (UNK,)  # an unmatchable rest makes the whole word [UNK]
    assert vocab.pieces("a" * 101) == (UNK,)


def test_evaluation_arrays_hold_wordpiece_ids(vocabulary_file):
    graph = SceneGraph(
        "caption",
        [Entity("Red T-shirt", ["playing"]), Entity("dogs", ["zebra"])],
        [Relation(0, "holding", 1), Relation(1, "", 0)],
    )
    arrays = bert_encoder(vocabulary_file).encode(graph)
    np.testing.assert_array_equal(arrays["entity_tokens"][:2], [row(RED, 10, 9), row(*DOGS)])
    np.testing.assert_array_equal(arrays["entity_tokens"][2], 0)
    np.testing.assert_array_equal(arrays["attribute_tokens"][:2, 0], [row(*PLAYING), row(UNK)])
    np.testing.assert_array_equal(arrays["relation_tokens"], [row(*HOLDING), row(17)])


def test_targets_do_not_depend_on_the_tokeniser(vocabulary_file):
    graph = SceneGraph("c", [Entity("red man", ["very tall"]), Entity("dog", [])],
                       [Relation(0, "on", 1)])
    bert = bert_encoder(vocabulary_file, AugmentConfig())
    gru_model = dataclasses.replace(bert_model(vocabulary_file), text_encoder="gru")
    gru = GraphEncoder(scene_vocabulary(), gru_model, AugmentConfig())
    for seed in (None, *range(20)):
        rngs = [None if seed is None else np.random.default_rng(seed) for _ in range(2)]
        a, b = gru.encode(graph, rngs[0]), bert.encode(graph, rngs[1])
        for key in ("entity_name_ids", "entity_attribute_ids", "graph_name_ids",
                    "graph_attribute_ids", "relation_subject", "relation_object"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_truncation_keeps_the_words_that_fit_whole(vocabulary_file):
    enc = bert_encoder(vocabulary_file)  # room for 4 pieces
    tokens = enc.encode(one_entity("unbelievable red man", ["playing unbelievable"]))
    np.testing.assert_array_equal(tokens["entity_tokens"][0], row(*UNBELIEVABLE, RED))
    np.testing.assert_array_equal(tokens["attribute_tokens"][0, 0], row(*PLAYING))
    short = bert_encoder(vocabulary_file, max_phrase_tokens=4)  # room for 2
    first = short.encode(one_entity("unbelievable man"))["entity_tokens"][0]
    np.testing.assert_array_equal(first, [CLS, 19, 20, SEP])


def rows_seen(enc: GraphEncoder, graph: SceneGraph, key: str, seeds: int = 300) -> set:
    return {tuple(enc.encode(graph, np.random.default_rng(s))[key][0].ravel()[:6])
            for s in range(seeds)}


def test_masking_uses_the_bert_mask_id_for_every_piece_of_a_word(vocabulary_file):
    enc = bert_encoder(vocabulary_file, dataclasses.replace(NO_SAMPLING, token_mask=0.5))
    seen = rows_seen(enc, one_entity("playing red"), "entity_tokens")
    assert seen == {tuple(row(*PLAYING, RED)), tuple(row(MASK, MASK, RED)),
                    tuple(row(*PLAYING, MASK))}


def test_deletion_removes_whole_words(vocabulary_file):
    enc = bert_encoder(vocabulary_file, dataclasses.replace(NO_SAMPLING, token_delete=0.5))
    seen = rows_seen(enc, one_entity("playing red"), "entity_tokens")
    assert seen == {tuple(row(*PLAYING, RED)), tuple(row(RED)), tuple(row(*PLAYING))}


def test_number_and_adverb_sampling_act_on_wordpiece_words(vocabulary_file):
    singular = bert_encoder(vocabulary_file, dataclasses.replace(NO_SAMPLING, singularize=1.0))
    assert rows_seen(singular, one_entity("red dogs"), "entity_tokens", 20) == {tuple(row(RED, 11))}
    plural = bert_encoder(vocabulary_file, dataclasses.replace(NO_SAMPLING, pluralize=1.0))
    assert rows_seen(plural, one_entity("red dog"), "entity_tokens", 20) == {tuple(row(RED, *DOGS))}
    adverbs = bert_encoder(vocabulary_file, dataclasses.replace(NO_SAMPLING, adverb_drop=1.0))
    seen = rows_seen(adverbs, one_entity("man", ["very tall"]), "attribute_tokens", 20)
    assert seen == {tuple(row(15))}


def test_a_bert_run_without_a_vocabulary_names_the_preset_key():
    model = ModelConfig(text_encoder="bert", bert_backbone={"num_layers": 1})
    with pytest.raises(VocabularyError, match="model.bert_preset"):
        GraphEncoder(scene_vocabulary(), model, NO_SAMPLING)


def write_preset(tmp_path, lowercase: bool | None):
    preset = tmp_path / "preset"
    (preset / PRESET_VOCABULARY).parent.mkdir(parents=True)
    (preset / PRESET_VOCABULARY).write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    if lowercase is not None:
        config = {"class_name": "BertTokenizer", "config": {"lowercase": lowercase}}
        (preset / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    return preset


def test_a_preset_directory_brings_its_vocabulary(tmp_path):
    preset = write_preset(tmp_path, lowercase=True)
    model = ModelConfig(text_encoder="bert", bert_preset=str(preset), max_phrase_tokens=6)
    arrays = GraphEncoder(scene_vocabulary(), model, NO_SAMPLING).encode(one_entity("playing"))
    np.testing.assert_array_equal(arrays["entity_tokens"][0], row(*PLAYING))


def test_a_cased_or_incomplete_preset_is_refused(tmp_path):
    cased = write_preset(tmp_path, lowercase=False)
    with pytest.raises(VocabularyError, match="cased BERT"):
        WordPieceVocabulary.from_preset(cased)
    with pytest.raises(VocabularyError, match="vocabulary.txt not found"):
        WordPieceVocabulary.from_preset(tmp_path / "elsewhere")


def test_vocabulary_file_needs_pad_at_zero(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("\n".join(TOKENS[1:] + ["[PAD]"]), encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"\[PAD\] has id 22; it must be 0"):
        WordPieceVocabulary.load(path)


def test_pieces_equal_keras_hub_bert_tokenizer():
    keras_hub = pytest.importorskip("keras_hub")
    pytest.importorskip("tensorflow_text")
    from cora_keras.scene_graph.vocabulary import tokenize

    # BERT uncased strips accents; keras_hub's BertTokenizer does only when asked.
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TOKENS, lowercase=True, strip_accents=True)
    vocab = WordPieceVocabulary(TOKENS)
    text = "Red playing unbelievable CAFÉ zebra playx dogs holding man"
    ours = [piece for word in tokenize(text) for piece in vocab.pieces(word)]
    assert ours == np.asarray(tokenizer(text)).tolist()
