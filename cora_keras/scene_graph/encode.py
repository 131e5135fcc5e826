"""Scene graphs -> the fixed-shape caption arrays of `cora_keras.inputs`.

`GraphEncoder.encode(graph)` gives what the model reads for one caption
(entity, attribute and relation token ids, relation ends) and the targets
of the objective (string ids of names and attributes); `image_ids` is the
pipeline's. With an `rng` it applies the training-time sampling of DATA.md
section 3, every probability taken from `AugmentConfig`:

1. Entities: each dropped with p `entity_drop` (if all are, one chosen at
   random stays), then the first E survivors in parse order are kept and
   re-indexed; relations touching a dropped entity go with it.
2. Attributes of a kept entity: each dropped with p `attribute_drop`; if
   more than A remain, a random subset of A (in their original order).
   Inside a kept attribute each adverb is dropped with p `adverb_drop`,
   unless the attribute holds nothing but adverbs. Adverbs are the
   vocabulary's precomputed set (spaCy tags of the words, see
   `vocabulary.py`): no tagging at encoding time.
3. Name: with p `singularize` its last word becomes singular (the
   vocabulary's plural -> singular map; unchanged when not a known
   plural); otherwise with p `pluralize` it becomes plural. So the
   overall chance of pluralising is (1 - singularize) * pluralize.
4. Relations: each dropped with p `relation_drop`, the rest shuffled, the
   first K kept. An empty predicate (no word) becomes "and" or "with"
   (even odds); at evaluation it is "and".
5. Words of names, attributes and predicates (after truncation to what
   fits into T - 2 tokens): each replaced by `[MASK]` with p
   `token_mask`, else deleted with p `token_delete`. If that leaves no
   word or only `[MASK]`, the phrase is fed unchanged.

Token ids are those of `model.text_encoder` (`phrase_tokens.py`): the
scene-graph vocabulary's word ids, or for "bert" the BERT WordPiece ids
(a masked word is `[MASK]` per piece). Sampling always acts on words.

Without an rng (evaluation) nothing is sampled: the first E entities,
their first A attributes, the relations between kept entities in order
(the first K). Real slots always come first; padding is 0.

Targets: `entity_name_ids` / `entity_attribute_ids` are `phrase_id`s of
the original strings of what was fed (an attribute keeps the id of its
original text even when words were masked or dropped);
`graph_name_ids` / `graph_attribute_ids` describe the un-sampled graph's
first E entities and their first A attributes.
"""

from __future__ import annotations

import functools
import zlib
from typing import Iterable, Sequence

import numpy as np

from cora_keras.config import AugmentConfig, ModelConfig
from cora_keras.inputs import caption_specs, target_specs
from cora_keras.scene_graph.schema import SceneGraph, SceneGraphError
from cora_keras.scene_graph.phrase_tokens import (
    PHRASE_CACHE_SIZE,
    PhraseTokens,
    Unit,
    phrase_tokens,
)
from cora_keras.scene_graph.vocabulary import Vocabulary

ENCODED_KEYS = (
    "entity_tokens",
    "attribute_tokens",
    "relation_tokens",
    "relation_subject",
    "relation_object",
    "entity_name_ids",
    "entity_attribute_ids",
    "graph_name_ids",
    "graph_attribute_ids",
)
_AUGMENT_FIELDS = (
    "entity_drop",
    "attribute_drop",
    "adverb_drop",
    "singularize",
    "pluralize",
    "token_mask",
    "token_delete",
    "relation_drop",
)


@functools.lru_cache(maxsize=PHRASE_CACHE_SIZE)
def phrase_id(text: str) -> int:
    """Positive 31-bit id of a phrase, stable across processes and runs.

    CRC-32 of the lower-cased text with whitespace runs collapsed, masked
    to 31 bits (0 becomes 1). Equal strings give equal ids; distinct
    strings collide with probability about 2**-31 per pair.
    """
    key = " ".join(text.lower().split()).encode("utf-8")
    return (zlib.crc32(key) & 0x7FFFFFFF) or 1


class _Uniforms:
    """Uniform [0, 1) draws from a numpy Generator, fetched in chunks."""

    def __init__(self, rng: np.random.Generator, chunk: int = 64) -> None:
        self._rng = rng
        self._chunk = chunk
        self._values: list[float] = []

    def __call__(self) -> float:
        if not self._values:
            self._values = self._rng.random(self._chunk).tolist()
        return self._values.pop()


class GraphEncoder:
    """Encodes SceneGraphs into the caption arrays and targets of the model.

    Args:
        vocabulary: the scene-graph vocabulary: word ids (GRU, bag of
            words) and the singular/plural and adverb lists.
        model_config: `ModelConfig` (E = max_entities, A = max_attributes,
            K = max_caption_relations, T = max_phrase_tokens; the
            tokeniser of `text_encoder`, with `bert_preset` or
            `bert_vocabulary` for "bert").
        augment_config: `AugmentConfig`, the sampling probabilities.

    Example:
        >>> encoder = GraphEncoder(vocab, config.model, config.augment)
        >>> arrays = encoder.encode(graph, rng=np.random.default_rng(0))
        >>> arrays["entity_tokens"].shape  # (E, T)
    """

    def __init__(
        self, vocabulary: Vocabulary, model_config: ModelConfig, augment_config: AugmentConfig
    ) -> None:
        self.vocabulary = vocabulary
        self.specs = {**caption_specs(model_config), **target_specs(model_config)}
        del self.specs["image_ids"]
        self.max_entities = model_config.max_entities
        self.max_attributes = model_config.max_attributes
        self.max_relations = model_config.max_caption_relations
        self.max_tokens = model_config.max_phrase_tokens
        for name in ("max_entities", "max_attributes", "max_caption_relations"):
            if getattr(model_config, name) < 1:
                raise ValueError(f"model.{name} = {getattr(model_config, name)}: must be >= 1")
        if self.max_tokens < 3:
            raise ValueError(
                f"model.max_phrase_tokens = {self.max_tokens}: must be >= 3 ([CLS] w [SEP])"
            )
        for name in _AUGMENT_FIELDS:
            p = getattr(augment_config, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} = {p}: not a probability in [0, 1]")
        if augment_config.token_mask + augment_config.token_delete > 1.0:
            raise ValueError(
                "augment.token_mask + augment.token_delete = "
                f"{augment_config.token_mask + augment_config.token_delete}: must be <= 1"
            )
        self.augment = augment_config
        self.tokens: PhraseTokens = phrase_tokens(vocabulary, model_config)

    # -------------------------------------------------------------- api

    def encode(
        self, graph: SceneGraph, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays of one caption (shapes of `inputs.caption_specs` and
        `target_specs`, without `image_ids`); `rng` None = evaluation."""
        batch = self.encode_batch([graph], rng)
        return {key: value[0] for key, value in batch.items()}

    def encode_batch(
        self, graphs: Iterable[SceneGraph], rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """`encode` of each graph, stacked on a leading batch axis."""
        graphs = list(graphs)
        arrays = {
            key: np.zeros((len(graphs), *shape), dtype=dtype)
            for key, (shape, dtype) in self.specs.items()
        }
        draw = None if rng is None else _Uniforms(rng)
        for row, graph in enumerate(graphs):
            if not graph.entities:
                raise SceneGraphError(
                    f"graph {row} ({graph.caption!r}): field 'entities' is empty"
                )
            self._encode_into(graph, draw, arrays, row)
        return arrays

    def phrase_row(self, text: str) -> np.ndarray:
        """(T,) token row of a phrase as evaluation writes it (truncated to fit)."""
        row = np.zeros(self.max_tokens, dtype=np.int32)
        self.tokens.write(row, self.tokens.fit(self.tokens.words(text)))
        return row

    # ---------------------------------------------------------- phrases

    def _perturb(self, ids: Sequence[Unit], draw: _Uniforms) -> Sequence[Unit]:
        """Mask or delete each word; unchanged if none would stay unmasked."""
        mask_p = self.augment.token_mask
        gone_p = mask_p + self.augment.token_delete
        masked = self.tokens.masked
        out = []
        unmasked = False
        for word in ids:
            u = draw()
            if u < mask_p:
                out.append(masked(word))
            elif u >= gone_p:
                out.append(word)
                unmasked = True
        return out if unmasked else ids

    def _vary_number(self, ids: tuple[Unit, ...], draw: _Uniforms) -> tuple[Unit, ...]:
        """Singularise, else pluralise, the last word of a name."""
        u = draw()
        singular_p = self.augment.singularize
        if not ids:
            return ids
        if u < singular_p:
            table = self.tokens.singular_of
        elif u < singular_p + (1.0 - singular_p) * self.augment.pluralize:
            table = self.tokens.plural_of
        else:
            return ids
        return (*ids[:-1], table.get(ids[-1], ids[-1]))

    def _drop_adverbs(self, ids: tuple[Unit, ...], draw: _Uniforms) -> Sequence[Unit]:
        """Drop each adverb with p adverb_drop, unless the phrase is all adverbs."""
        adverbs = self.tokens.adverbs
        if all(word in adverbs for word in ids):
            return ids
        p = self.augment.adverb_drop
        return [word for word in ids if word not in adverbs or draw() >= p]

    # ------------------------------------------------------------- graph

    def _encode_into(
        self,
        graph: SceneGraph,
        draw: _Uniforms | None,
        arrays: dict[str, np.ndarray],
        row: int,
    ) -> None:
        E, A, K = self.max_entities, self.max_attributes, self.max_relations
        tokens = self.tokens
        fit = tokens.fit
        aug = self.augment
        entities = graph.entities
        n = len(entities)

        if draw is None:
            kept = list(range(min(n, E)))
        else:
            kept = [i for i in range(n) if draw() >= aug.entity_drop]
            if not kept:
                kept = [int(draw() * n)]
            kept = kept[:E]

        entity_tokens = arrays["entity_tokens"][row]
        attribute_tokens = arrays["attribute_tokens"][row]
        name_ids = arrays["entity_name_ids"][row]
        attribute_ids = arrays["entity_attribute_ids"][row]
        for slot, index in enumerate(kept):
            entity = entities[index]
            attributes = entity.attributes
            name = tokens.words(entity.name)
            if draw is None:
                fed = attributes[:A]
                name = fit(name)
            else:
                fed = [a for a in attributes if draw() >= aug.attribute_drop]
                if len(fed) > A:
                    keys = [draw() for _ in fed]
                    chosen = sorted(sorted(range(len(fed)), key=keys.__getitem__)[:A])
                    fed = [fed[i] for i in chosen]
                name = self._perturb(fit(self._vary_number(name, draw)), draw)
            tokens.write(entity_tokens[slot], name)
            name_ids[slot] = phrase_id(entity.name)
            for j, attribute in enumerate(fed):
                ids = tokens.words(attribute)
                if draw is None:
                    ids = fit(ids)
                else:
                    ids = self._perturb(fit(self._drop_adverbs(ids, draw)), draw)
                tokens.write(attribute_tokens[slot, j], ids)
                attribute_ids[slot, j] = phrase_id(attribute)

        slot_of = {index: slot for slot, index in enumerate(kept)}
        relations = [
            (slot_of[r.subject], slot_of[r.object], r.predicate)
            for r in graph.relations
            if r.subject in slot_of and r.object in slot_of
        ]
        if draw is not None:
            relations = [r for r in relations if draw() >= aug.relation_drop]
            keys = [draw() for _ in relations]
            relations = [relations[i] for i in sorted(range(len(relations)), key=keys.__getitem__)]
        relation_tokens = arrays["relation_tokens"][row]
        for k, (subject, obj, predicate) in enumerate(relations[:K]):
            ids = tokens.words(predicate)
            if draw is None:
                ids = fit(ids or tokens.fillers[0])
            else:
                if not ids:
                    ids = tokens.fillers[0] if draw() < 0.5 else tokens.fillers[1]
                ids = self._perturb(fit(ids), draw)
            tokens.write(relation_tokens[k], ids)
            arrays["relation_subject"][row, k] = subject
            arrays["relation_object"][row, k] = obj

        graph_names = arrays["graph_name_ids"][row]
        graph_attributes = arrays["graph_attribute_ids"][row]
        for slot, entity in enumerate(entities[:E]):
            graph_names[slot] = phrase_id(entity.name)
            for j, attribute in enumerate(entity.attributes[:A]):
                graph_attributes[slot, j] = phrase_id(attribute)
