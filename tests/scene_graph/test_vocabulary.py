"""Vocabulary: tokenisation, phrase ids, building, JSON files (ours and the release's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cora_keras.scene_graph import vocabulary as vocabulary_module
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph
from cora_keras.scene_graph.vocabulary import (
    SPECIAL_TOKENS,
    Vocabulary,
    VocabularyError,
    tokenize,
)

WORDS = list(SPECIAL_TOKENS) + ["man", "red", "dogs", "dog", "very", "on"]


def small_vocabulary() -> Vocabulary:
    return Vocabulary(WORDS, {"dogs": "dog"}, {"dog": "dogs"}, ["very"])


@pytest.fixture
def no_spacy(monkeypatch):
    """Replace the spaCy tagging by empty lists (fast, spaCy-free tests)."""
    monkeypatch.setattr(vocabulary_module, "_linguistic_lists", lambda words: ({}, {}, []))


def test_tokenize_splits_on_whitespace_and_punctuation():
    assert tokenize("A T-shirt,  man's DOG!\tis 2.5m") == [
        "a", "t", "shirt", "man", "s", "dog", "is", "2", "5m"
    ]
    assert tokenize(" ,;- ") == []


def test_specials_and_ids():
    vocab = small_vocabulary()
    assert [vocab.word2idx[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (1, 2, 3, 4)
    assert len(vocab) == 11
    assert vocab.word_ids(["red", "zebra", "man"]) == [6, 1, 5]


def test_encode_phrase_pads_truncates_and_marks_unknown_words():
    vocab = small_vocabulary()
    row = vocab.encode_phrase("Red zebra-man", 7)
    assert row.dtype == np.int32 and row.shape == (7,)
    np.testing.assert_array_equal(row, [2, 6, 1, 5, 3, 0, 0])
    # five words, room for three: the last two are dropped, [SEP] stays.
    np.testing.assert_array_equal(vocab.encode_phrase("man red dogs dog on", 5), [2, 5, 6, 7, 3])
    np.testing.assert_array_equal(vocab.encode_phrase("", 4), [2, 3, 0, 0])
    with pytest.raises(VocabularyError, match="max_tokens"):
        vocab.encode_phrase("man", 2)


def test_constructor_rejects_bad_vocabularies():
    with pytest.raises(VocabularyError, match=r"\[PAD\] = 1"):
        Vocabulary(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"], {}, {}, [])
    with pytest.raises(VocabularyError, match=r"lacks the special tokens \[MASK\]"):
        Vocabulary(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], {}, {}, [])
    with pytest.raises(VocabularyError, match="repeats 'man'"):
        Vocabulary(WORDS + ["man"], {}, {}, [])
    with pytest.raises(VocabularyError, match="'plural_to_singular' entry 'cats'"):
        Vocabulary(WORDS, {"cats": "cat"}, {}, [])
    with pytest.raises(VocabularyError, match="'adverbs' holds 'quickly'"):
        Vocabulary(WORDS, {}, {}, ["quickly"])


def graphs_for_counting() -> list[SceneGraph]:
    return [
        SceneGraph("", [Entity("Dogs", ["red", "very red"]), Entity("man", [])],
                   [Relation(1, "on", 0)]),
        SceneGraph("", [Entity("red ball", ["tiny"])], []),
    ]


def test_build_orders_by_count_then_alphabetically(no_spacy):
    # counts: red 3, ball dogs man on tiny very 1; "and"/"with" always kept.
    vocab = Vocabulary.build(graphs_for_counting())
    assert vocab.idx2word == list(SPECIAL_TOKENS) + [
        "red", "ball", "dogs", "man", "on", "tiny", "very", "and", "with"
    ]
    vocab = Vocabulary.build(graphs_for_counting(), min_count=2)
    assert vocab.idx2word == list(SPECIAL_TOKENS) + ["red", "and", "with"]
    with pytest.raises(VocabularyError, match="min_count = 0"):
        Vocabulary.build([], min_count=0)


def test_build_derives_number_and_adverb_lists_with_spacy():
    graphs = [
        SceneGraph("", [Entity("dogs", ["very big"]), Entity("dog", []),
                        Entity("men", ["tall"]), Entity("cars", [])], []),
    ]
    vocab = Vocabulary.build(graphs)
    assert vocab.plural_to_singular == {"dogs": "dog"}  # "man", "car" unknown
    assert vocab.singular_to_plural == {"dog": "dogs"}
    assert "very" in vocab.adverbs
    assert not {"dog", "dogs", "big", "tall"} & vocab.adverbs


def test_save_load_round_trip(tmp_path):
    vocab = small_vocabulary()
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert data["idx"] == len(WORDS)
    assert data["idx2word"]["2"] == "[CLS]" and data["word2idx"]["dog"] == 8
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.singular_to_plural == {"dog": "dogs"} and loaded.adverbs == {"very"}


def write_release(path, words, **changes) -> None:
    data = {
        "word2idx": {w: i for i, w in enumerate(words)},
        "idx2word": {str(i): w for i, w in enumerate(words)},
        "idx": len(words),
    }
    data.update(changes)
    path.write_text(json.dumps(data))


def test_from_release_keeps_the_release_ids(tmp_path, no_spacy):
    words = ["[PAD]", "[UNK]", "walking", "[CLS]", "[SEP]", "[MASK]", "dog"]
    path = tmp_path / "vocab.json"
    write_release(path, words)
    vocab = Vocabulary.from_release(path)
    assert vocab.idx2word == words
    assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (3, 4, 5)
    np.testing.assert_array_equal(vocab.encode_phrase("dog walking fast", 6), [3, 6, 2, 1, 4, 0])
    write_release(path, words, idx2word=words)  # a list is read as well
    assert Vocabulary.from_release(path).idx2word == words


def test_from_release_reads_our_files(tmp_path, no_spacy):
    path = tmp_path / "vocab.json"
    small_vocabulary().save(path)
    assert Vocabulary.from_release(path).idx2word == WORDS


@pytest.mark.parametrize(
    "words, changes, message",
    [
        (["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"], {}, r"\[PAD\] = 1; it must be 0"),
        (["[PAD]", "[UNK]", "[CLS]", "[SEP]"], {}, r"lacks the special tokens \[MASK\]"),
        (list(SPECIAL_TOKENS), {"idx": 7}, "field 'idx' = 7"),
        (list(SPECIAL_TOKENS), {"idx2word": {"0": "[PAD]", "1": "[UNK]", "2": "[CLS]",
                                             "3": "[SEP]", "9": "[MASK]"}},
         "'idx2word' key '9'"),
        (list(SPECIAL_TOKENS), {"word2idx": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2,
                                             "[SEP]": 4, "[MASK]": 3}},
         r"entry '\[SEP\]': 4 but 'idx2word' has '\[MASK\]'"),
    ],
)
def test_from_release_errors_name_the_file_and_field(tmp_path, no_spacy, words, changes, message):
    path = tmp_path / "vocab.json"
    write_release(path, words, **changes)
    with pytest.raises(VocabularyError, match=message) as error:
        Vocabulary.from_release(path)
    assert str(path) in str(error.value)


def test_missing_fields_and_invalid_json(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"word2idx": {}, "idx": 0}))
    with pytest.raises(VocabularyError, match="field 'idx2word' is missing"):
        Vocabulary.from_release(path)
    write_release(path, list(SPECIAL_TOKENS))
    with pytest.raises(VocabularyError, match="field 'plural_to_singular' is missing"):
        Vocabulary.load(path)
    path.write_text('{"word2idx": {},\n "idx": }')
    with pytest.raises(VocabularyError, match="invalid JSON at line 2"):
        Vocabulary.load(path)
