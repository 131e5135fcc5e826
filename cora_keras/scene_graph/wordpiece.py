"""BERT WordPiece vocabulary: words -> WordPiece ids, read from local files.

The phrases of a scene graph are already split into lower-case words of
letters and digits (`vocabulary.tokenize`), so only BERT-uncased's word
normalisation (accents stripped: NFD, combining marks removed) and the
greedy longest-match-first WordPiece split are needed here: a word is cut
into the longest vocabulary prefix, then the longest `##`-continuation,
and so on; a word with an unmatchable rest, or longer than 100 characters,
is one `[UNK]`. Chinese characters are not split apart (BERT's basic
tokeniser would); captions are English. Accents are stripped as in
Google's BERT-uncased (keras_hub's BertTokenizer keeps them unless built
with `strip_accents=True`; the uncased vocabulary has few accented pieces).

Where the vocabulary comes from (`for_model`), never downloaded:
- `model.bert_preset`: the keras_hub preset directory's
  `assets/tokenizer/vocabulary.txt`; its `tokenizer.json` must not set
  `lowercase: false` (phrases are lower-cased, so cased BERT is refused).
- otherwise `model.bert_vocabulary`: a vocabulary file of one token per
  line (id = line number), for a BERT built from `model.bert_backbone`.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

from cora_keras.config import ModelConfig
from cora_keras.scene_graph.vocabulary import PAD, SPECIAL_TOKENS, VocabularyError

PRESET_VOCABULARY = Path("assets", "tokenizer", "vocabulary.txt")
PRESET_TOKENIZER_CONFIG = "tokenizer.json"
CONTINUATION = "##"
MAX_WORD_CHARS = 100


class WordPieceVocabulary:
    """WordPiece token <-> id map of a BERT model.

    Args:
        tokens: every token, position = id; holds `[PAD]` (id 0, the
            model's padding), `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`.
        where: names the source in error messages.

    Example:
        >>> vocab = WordPieceVocabulary.load("vocabulary.txt")
        >>> vocab.pieces("playing")  # ids of "play", "##ing"
    """

    def __init__(self, tokens: list[str], where: str = "WordPiece vocabulary") -> None:
        self.tokens = list(tokens)
        self.token2id: dict[str, int] = {}
        for index, token in enumerate(self.tokens):
            self.token2id.setdefault(token, index)
        missing = [token for token in SPECIAL_TOKENS if token not in self.token2id]
        if missing:
            raise VocabularyError(f"{where}: lacks the special tokens {', '.join(missing)}")
        if self.token2id[PAD] != 0:
            raise VocabularyError(
                f"{where}: {PAD} has id {self.token2id[PAD]}; it must be 0 "
                "(the phrase encoder treats token 0 as padding)"
            )
        self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.token2id[token] for token in SPECIAL_TOKENS[1:]
        )

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordPieceVocabulary":
        """Read a vocabulary file: one token per line, id = line number."""
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
        while tokens and not tokens[-1]:
            tokens.pop()
        return cls(tokens, where=os.fspath(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary file `load` reads back: one token per line."""
        Path(path).write_text("".join(token + "\n" for token in self.tokens), encoding="utf-8")

    @classmethod
    def from_preset(cls, preset: str | os.PathLike) -> "WordPieceVocabulary":
        """The vocabulary of a local keras_hub BERT preset directory."""
        preset = Path(preset)
        path = preset / PRESET_VOCABULARY
        if not path.is_file():
            raise VocabularyError(
                f"model.bert_preset {os.fspath(preset)!r}: {path} not found; a local "
                "keras_hub BERT preset directory holds its WordPiece vocabulary there"
            )
        config_path = preset / PRESET_TOKENIZER_CONFIG
        if config_path.is_file():
            with open(config_path, encoding="utf-8") as f:
                lowercase = json.load(f).get("config", {}).get("lowercase", True)
            if not lowercase:
                raise VocabularyError(
                    f"model.bert_preset {os.fspath(preset)!r}: a cased BERT "
                    f"({config_path} sets lowercase false); phrases are lower-cased, "
                    "use an uncased preset"
                )
        return cls.load(path)

    def pieces(self, word: str) -> tuple[int, ...]:
        """WordPiece ids of one lower-case word (greedy longest match)."""
        word = "".join(
            c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
        )
        if not word or len(word) > MAX_WORD_CHARS:
            return (self.unk_id,)
        ids = []
        start = 0
        while start < len(word):
            prefix = CONTINUATION if start else ""
            for end in range(len(word), start, -1):
                index = self.token2id.get(prefix + word[start:end])
                if index is not None:
                    break
            else:
                return (self.unk_id,)
            ids.append(index)
            start = end
        return tuple(ids)


def for_model(model_config: ModelConfig) -> WordPieceVocabulary:
    """The WordPiece vocabulary of a BERT run (see the module doc)."""
    if model_config.bert_preset is not None:
        return WordPieceVocabulary.from_preset(model_config.bert_preset)
    if model_config.bert_vocabulary is not None:
        return WordPieceVocabulary.load(model_config.bert_vocabulary)
    raise VocabularyError(
        "model.text_encoder 'bert' needs a WordPiece vocabulary to tokenise phrases: "
        "set model.bert_preset to a local keras_hub BERT preset directory, or, with "
        "model.bert_backbone, model.bert_vocabulary to a vocabulary file"
    )
