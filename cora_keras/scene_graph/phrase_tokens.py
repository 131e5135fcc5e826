"""Phrase text -> the token ids the phrase encoder reads, word by word.

`GraphEncoder` samples phrases at the level of words (adverbs dropped,
the last word's number varied, words masked or deleted), so a phrase is
handed to it as a tuple of *word units* and written back as token ids:

- `WordTokens` (GRU and bag of words): a unit is the word's id in the
  dataset's scene-graph `Vocabulary` (unknown words are `[UNK]`).
- `WordPieceTokens` (BERT): a unit is the tuple of the word's WordPiece
  ids in the BERT vocabulary (`wordpiece.py`); a masked word becomes one
  `[MASK]` per piece (whole-word masking).

Both write `[CLS] tokens [SEP]` padded with 0 into rows of T =
`model.max_phrase_tokens`. Truncation (`fit`) keeps the words that fit
whole into T - 2 tokens; a first word longer than that keeps its first
T - 2 pieces. The singular/plural pairs and adverbs are the scene-graph
vocabulary's word lists, carried over to units.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import numpy as np

from cora_keras.config import ModelConfig
from cora_keras.scene_graph.vocabulary import EMPTY_PREDICATE_WORDS, Vocabulary, tokenize
from cora_keras.scene_graph.wordpiece import WordPieceVocabulary, for_model

PHRASE_CACHE_SIZE = 1 << 18

Unit = Hashable


class PhraseTokens:
    """Word units of phrases, their sampling tables, and how rows are written.

    Subclasses give `_unit(word)`, `masked(unit)`, `fit(units)` and
    `write(row, units)`.

    Attributes:
        singular_of / plural_of: unit of a plural (singular) noun -> unit
            of its singular (plural).
        adverbs: units of adverbs.
        fillers: the units of each word an empty predicate is fed as.
    """

    def __init__(self, vocabulary: Vocabulary, max_tokens: int) -> None:
        self.max_words = max_tokens - 2
        self._cache: dict[str, tuple[Unit, ...]] = {}
        unit = self._unit
        self.singular_of = {unit(p): unit(s) for p, s in vocabulary.plural_to_singular.items()}
        self.plural_of = {unit(s): unit(p) for s, p in vocabulary.singular_to_plural.items()}
        self.adverbs = frozenset(unit(w) for w in vocabulary.adverbs)
        self.fillers = tuple((unit(w),) for w in EMPTY_PREDICATE_WORDS)

    def words(self, text: str) -> tuple[Unit, ...]:
        """Units of the words of `text` (untruncated), cached."""
        units = self._cache.get(text)
        if units is None:
            if len(self._cache) >= PHRASE_CACHE_SIZE:
                self._cache.clear()
            units = tuple(self._unit(word) for word in tokenize(text))
            self._cache[text] = units
        return units

    def _unit(self, word: str) -> Unit:
        raise NotImplementedError

    def masked(self, unit: Unit) -> Unit:
        """The unit a masked word is fed as."""
        raise NotImplementedError

    def fit(self, units: Sequence[Unit]) -> Sequence[Unit]:
        """The leading units that fit into T - 2 tokens."""
        raise NotImplementedError

    def write(self, row: np.ndarray, units: Sequence[Unit]) -> None:
        """`[CLS] tokens [SEP]` of fitted units into a zero row of length T."""
        raise NotImplementedError


class WordTokens(PhraseTokens):
    """One token per word: its id in the scene-graph vocabulary."""

    def __init__(self, vocabulary: Vocabulary, max_tokens: int) -> None:
        self._ids = vocabulary.word2idx
        self._unk, self._cls, self._sep = vocabulary.unk_id, vocabulary.cls_id, vocabulary.sep_id
        self._mask = vocabulary.mask_id
        super().__init__(vocabulary, max_tokens)

    def _unit(self, word: str) -> int:
        return self._ids.get(word, self._unk)

    def masked(self, unit: int) -> int:
        return self._mask

    def fit(self, units: Sequence[int]) -> Sequence[int]:
        return units[: self.max_words]

    def write(self, row: np.ndarray, units: Sequence[int]) -> None:
        row[: len(units) + 2] = (self._cls, *units, self._sep)


class WordPieceTokens(PhraseTokens):
    """The WordPiece ids of each word in a BERT vocabulary."""

    def __init__(
        self, wordpieces: WordPieceVocabulary, vocabulary: Vocabulary, max_tokens: int
    ) -> None:
        self.wordpieces = wordpieces
        super().__init__(vocabulary, max_tokens)
        # A word BERT cannot split is [UNK], like every other such word:
        # it must not make them all adverbs or plurals.
        unknown = (wordpieces.unk_id,)
        self.adverbs = self.adverbs - {unknown}
        self.singular_of.pop(unknown, None)
        self.plural_of.pop(unknown, None)

    def _unit(self, word: str) -> tuple[int, ...]:
        return self.wordpieces.pieces(word)

    def masked(self, unit: tuple[int, ...]) -> tuple[int, ...]:
        return (self.wordpieces.mask_id,) * len(unit)

    def fit(self, units: Sequence[tuple[int, ...]]) -> Sequence[tuple[int, ...]]:
        room = self.max_words
        if units and len(units[0]) > room:
            return (units[0][:room],)
        kept = 0
        for unit in units:
            if len(unit) > room:
                break
            room -= len(unit)
            kept += 1
        return units[:kept]

    def write(self, row: np.ndarray, units: Iterable[tuple[int, ...]]) -> None:
        ids = [piece for unit in units for piece in unit]
        row[: len(ids) + 2] = (self.wordpieces.cls_id, *ids, self.wordpieces.sep_id)


def phrase_tokens(vocabulary: Vocabulary, model_config: ModelConfig) -> PhraseTokens:
    """WordPiece units for `model.text_encoder` "bert", word ids otherwise."""
    if model_config.text_encoder == "bert":
        return WordPieceTokens(
            for_model(model_config), vocabulary, model_config.max_phrase_tokens
        )
    return WordTokens(vocabulary, model_config.max_phrase_tokens)
