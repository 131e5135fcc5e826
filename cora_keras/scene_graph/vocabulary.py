"""Word <-> id vocabulary of scene-graph phrases, with the word lists the
training-time sampling needs (singular/plural pairs, adverbs).

Tokenisation is deliberately simple and deterministic: lower-case, then
every maximal run of letters and digits is a word; whitespace and
punctuation (hyphens and apostrophes included) separate words, so
"T-shirt" -> ["t", "shirt"].

The linguistic lists come from spaCy tags of each vocabulary word taken on
its own (no sentence context), which keeps them cheap to build and makes
the encoder free of spaCy at run time; the price is some noise (a word can
be tagged out of context as a noun or adverb it rarely is in a caption):
- `plural_to_singular` / `singular_to_plural`: words tagged as plural nouns
  (NNS, NNPS) whose spaCy lemma differs and is itself in the vocabulary.
  When several plurals share a singular, the most frequent (lowest id) is
  its plural.
- `adverbs`: words whose part of speech is ADV.

File format (JSON, ours): `word2idx`, `idx2word` (string keys), `idx` (the
size), as in the CORA release's `vocab.json`, plus `plural_to_singular`,
`singular_to_plural` and `adverbs`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np

from cora_keras.scene_graph.schema import SceneGraph

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4 in a built vocabulary
EMPTY_PREDICATE_WORDS = ("and", "with")  # what an empty predicate is fed as

_WORD = re.compile(r"[^\W_]+")


class VocabularyError(ValueError):
    """A vocabulary file or argument is malformed."""


def tokenize(text: str) -> list[str]:
    """Lower-case words of `text`: maximal runs of letters and digits."""
    return _WORD.findall(text.lower())


def _load_tagger() -> Any:
    """spaCy's English pipeline with tagging and lemmas only (no parsing)."""
    from cora_keras.scene_graph.parser import load_spacy

    nlp = load_spacy()
    for component in ("attribute_ruler", "lemmatizer"):
        nlp.enable_pipe(component)
    if "parser" in nlp.pipe_names:
        nlp.disable_pipe("parser")
    return nlp


def _linguistic_lists(
    words: list[str],
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(plural_to_singular, singular_to_plural, adverbs) from spaCy tags.

    `words` are in id order, so the first plural seen for a singular is the
    most frequent one of a built vocabulary.
    """
    nlp = _load_tagger()
    known = set(words)
    plural_to_singular: dict[str, str] = {}
    singular_to_plural: dict[str, str] = {}
    adverbs: list[str] = []
    for word, doc in zip(words, nlp.pipe(words, batch_size=512)):
        if len(doc) != 1:
            continue
        token = doc[0]
        if token.pos_ == "ADV":
            adverbs.append(word)
        lemma = token.lemma_.lower()
        if token.tag_ in ("NNS", "NNPS") and lemma != word and lemma in known:
            plural_to_singular[word] = lemma
            singular_to_plural.setdefault(lemma, word)
    return plural_to_singular, singular_to_plural, adverbs


class Vocabulary:
    """Word <-> id map with special tokens and singular/plural/adverb lists.

    Args:
        words: every token, position = id; must hold the five special
            tokens with `[PAD]` at 0.
        plural_to_singular: plural noun -> its singular (both in `words`).
        singular_to_plural: singular noun -> its plural (both in `words`).
        adverbs: words that are adverbs.
        where: names the source in error messages.

    Example:
        >>> vocab = Vocabulary.build(graphs)  # needs spaCy
        >>> vocab.encode_phrase("Red car", 5)  # [CLS] red car [SEP] [PAD]
    """

    def __init__(
        self,
        words: Iterable[str],
        plural_to_singular: Mapping[str, str],
        singular_to_plural: Mapping[str, str],
        adverbs: Iterable[str],
        where: str = "vocabulary",
    ) -> None:
        self.idx2word: list[str] = list(words)
        self.word2idx: dict[str, int] = {}
        for index, word in enumerate(self.idx2word):
            if not isinstance(word, str) or not word:
                raise VocabularyError(f"{where}: field 'idx2word'[{index}] is not a word")
            if word in self.word2idx:
                raise VocabularyError(
                    f"{where}: field 'idx2word'[{index}] repeats {word!r} "
                    f"(also id {self.word2idx[word]})"
                )
            self.word2idx[word] = index
        missing = [token for token in SPECIAL_TOKENS if token not in self.word2idx]
        if missing:
            raise VocabularyError(
                f"{where}: field 'word2idx' lacks the special tokens {', '.join(missing)}"
            )
        if self.word2idx[PAD] != 0:
            raise VocabularyError(
                f"{where}: field 'word2idx' has {PAD} = {self.word2idx[PAD]}; "
                "it must be 0 (the model treats token 0 as padding)"
            )
        self.plural_to_singular = self._checked_map(
            plural_to_singular, "plural_to_singular", where
        )
        self.singular_to_plural = self._checked_map(
            singular_to_plural, "singular_to_plural", where
        )
        self.adverbs: frozenset[str] = frozenset(adverbs)
        unknown = sorted(w for w in self.adverbs if w not in self.word2idx)
        if unknown:
            raise VocabularyError(
                f"{where}: field 'adverbs' holds {unknown[0]!r}, not a vocabulary word"
            )
        self.unk_id = self.word2idx[UNK]
        self.cls_id = self.word2idx[CLS]
        self.sep_id = self.word2idx[SEP]
        self.mask_id = self.word2idx[MASK]

    def _checked_map(self, mapping: Mapping[str, str], field: str, where: str) -> dict[str, str]:
        if not isinstance(mapping, Mapping):
            raise VocabularyError(f"{where}: field '{field}' must be a word -> word mapping")
        for key, value in mapping.items():
            for word in (key, value):
                if word not in self.word2idx:
                    raise VocabularyError(
                        f"{where}: field '{field}' entry {key!r}: {value!r} names "
                        f"{word!r}, not a vocabulary word"
                    )
        return dict(mapping)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (
            self.idx2word == other.idx2word
            and self.plural_to_singular == other.plural_to_singular
            and self.singular_to_plural == other.singular_to_plural
            and self.adverbs == other.adverbs
        )

    # ----------------------------------------------------------------- ids

    def word_ids(self, words: Iterable[str]) -> list[int]:
        """Ids of `words`; a word not in the vocabulary is `[UNK]`."""
        get, unk = self.word2idx.get, self.unk_id
        return [get(word, unk) for word in words]

    def encode_phrase(self, text: str, max_tokens: int) -> np.ndarray:
        """`[CLS] w1 .. wk [SEP]` then `[PAD]` (0), int32 of shape (max_tokens,).

        Words past the first `max_tokens - 2` are dropped (truncation keeps
        `[SEP]`); unknown words are `[UNK]`.
        """
        if max_tokens < 3:
            raise VocabularyError(f"max_tokens = {max_tokens}: needs at least 3 ([CLS] w [SEP])")
        ids = self.word_ids(tokenize(text))[: max_tokens - 2]
        row = np.zeros((max_tokens,), dtype=np.int32)
        row[: len(ids) + 2] = [self.cls_id, *ids, self.sep_id]
        return row

    # ---------------------------------------------------------- building

    @classmethod
    def build(cls, graphs: Iterable[SceneGraph], min_count: int = 1) -> "Vocabulary":
        """Count the words of names, attributes and predicates (lower-case).

        Words seen at least `min_count` times follow the special tokens,
        most frequent first, ties alphabetical. The words an empty
        predicate is fed as ("and", "with") are always kept. Tags the words
        with spaCy for the singular/plural and adverb lists.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise VocabularyError(f"min_count = {min_count!r}: must be an int >= 1")
        counts: Counter[str] = Counter()
        for graph in graphs:
            for entity in graph.entities:
                counts.update(tokenize(entity.name))
                for attribute in entity.attributes:
                    counts.update(tokenize(attribute))
            for relation in graph.relations:
                counts.update(tokenize(relation.predicate))
        kept = {word for word, count in counts.items() if count >= min_count}
        kept.update(EMPTY_PREDICATE_WORDS)
        words = sorted(kept, key=lambda word: (-counts[word], word))
        plural_to_singular, singular_to_plural, adverbs = _linguistic_lists(words)
        return cls(
            list(SPECIAL_TOKENS) + words,
            plural_to_singular,
            singular_to_plural,
            adverbs,
            where="Vocabulary.build",
        )

    # --------------------------------------------------------------- io

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically."""
        path = os.fspath(path)
        data = {
            "word2idx": self.word2idx,
            "idx2word": {str(i): word for i, word in enumerate(self.idx2word)},
            "idx": len(self.idx2word),
            "plural_to_singular": dict(sorted(self.plural_to_singular.items())),
            "singular_to_plural": dict(sorted(self.singular_to_plural.items())),
            "adverbs": sorted(self.adverbs),
        }
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by `save`."""
        path = os.fspath(path)
        data, words = _read_release_fields(path)
        for field in ("plural_to_singular", "singular_to_plural", "adverbs"):
            if field not in data:
                raise VocabularyError(
                    f"{path}: field '{field}' is missing (a CORA release vocab.json? "
                    "read it with Vocabulary.from_release)"
                )
        if not isinstance(data["adverbs"], list):
            raise VocabularyError(f"{path}: field 'adverbs' must be a list of words")
        return cls(
            words,
            data["plural_to_singular"],
            data["singular_to_plural"],
            data["adverbs"],
            where=path,
        )

    @classmethod
    def from_release(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read the CORA release's `vocab.json` (ids kept as they are).

        The singular/plural and adverb lists are derived with spaCy.
        """
        path = os.fspath(path)
        _, words = _read_release_fields(path)
        plural_to_singular, singular_to_plural, adverbs = _linguistic_lists(words)
        return cls(words, plural_to_singular, singular_to_plural, adverbs, where=path)


def _read_release_fields(path: str) -> tuple[dict, list[str]]:
    """The JSON object of `path` and its words in id order, cross-checked.

    Reads `word2idx` (word -> id), `idx2word` (id -> word, string or int
    keys, or a list) and `idx` (the size); ids must be 0 .. idx-1.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise VocabularyError(
            f"{path}: invalid JSON at line {error.lineno} ({error.msg})"
        ) from None
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: expected a JSON object")
    for field in ("word2idx", "idx2word", "idx"):
        if field not in data:
            raise VocabularyError(f"{path}: field '{field}' is missing")
    word2idx, idx2word, size = data["word2idx"], data["idx2word"], data["idx"]
    if isinstance(size, bool) or not isinstance(size, int):
        raise VocabularyError(f"{path}: field 'idx' = {size!r} is not an integer")
    if not isinstance(word2idx, dict):
        raise VocabularyError(f"{path}: field 'word2idx' must be an object")
    if isinstance(idx2word, list):
        idx2word = dict(enumerate(idx2word))
    if not isinstance(idx2word, dict):
        raise VocabularyError(f"{path}: field 'idx2word' must be an object or a list")
    if len(word2idx) != size or len(idx2word) != size:
        raise VocabularyError(
            f"{path}: field 'idx' = {size} but 'word2idx' has {len(word2idx)} "
            f"and 'idx2word' {len(idx2word)} entries"
        )
    words: list[Any] = [None] * size
    for key, word in idx2word.items():
        try:
            index = int(key)
        except ValueError:
            raise VocabularyError(f"{path}: field 'idx2word' key {key!r} is not an id") from None
        if not 0 <= index < size or words[index] is not None:
            raise VocabularyError(
                f"{path}: field 'idx2word' key {key!r} is out of [0, {size}) or repeated"
            )
        words[index] = word
    for word, index in word2idx.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise VocabularyError(
                f"{path}: field 'word2idx' entry {word!r}: {index!r} is not an id in [0, {size})"
            )
        if words[index] != word:
            raise VocabularyError(
                f"{path}: field 'word2idx' entry {word!r}: {index} but 'idx2word' "
                f"has {words[index]!r} there"
            )
    return data, words
