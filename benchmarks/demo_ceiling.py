"""Bayes ceiling of retrieval on the demo world: ranking by the generator's likelihood.

Usage (from the repository root):
    python -m benchmarks.demo_ceiling --world DIR [--split test] [--check-draws 20000]

Scores every (caption c, scene s) pair of a split by P(c | s), the
probability that the caption sampler of `cora_keras.data.demo_world`
(`_sample_caption`) writes c's facts (entities with their attributes in text
order, relations with their predicates) for scene s:

  P(c | s) = P(m) * P(template edges E | m, s) / #orders fitting E
             * sum over distinct objects o_1..o_m fitting the caption of
               prod_i P(describe(o_i) = entity_i)
               * prod_(a,b) in E 1 / #true predicates(o_a, o_b)

  - m, the number of mentions: `_MENTION_WEIGHTS` restricted to m <= objects;
  - the template: a relation count from `_RELATION_WEIGHTS[m]`, a template
    drawn uniformly from its group, one relation fewer (and a new template)
    while no order of the objects fits the template's relation edges;
  - the objects: the first fitting order of a shuffled list, so uniform over
    the fitting orders;
  - `_describe`: its exact distribution, enumerated by running `_describe`
    itself on every answer to its random draws (shuffle and randint);
  - each predicate: uniform over the true predicates of its pair.
Templates sharing edges and the verbs are chosen independently of the scene,
so the caption's text adds only factors that cancel in every ranking. The
probabilities are exact fractions; ties are real ties. The generator's
rejection of a caption whose text repeats one of the scene's earlier
captions is ignored (the Monte-Carlo check measures what it changes).

Pairs are first filtered, vectorised, to those where every entity matches
exactly one object of the scene (a `_describe` output always does); only
those get the exact likelihood.

Rankings (Flickr30K 1K protocol: RSUM is the sum of the six recalls, in %):
  - truth: 1 when `graph_is_true` (the naive oracle);
  - P(c | s) both ways;
  - Bayes: text -> image by P(c | s) (uniform prior over scenes), image ->
    text by the posterior P(s | c) = P(c | s) / sum_s' P(c | s').
Recalls are the exact expectation over a uniformly random order of tied
scores; the last column is RSUM when every tie is won (cora_keras.retrieval).
Every pair is scored on its own, as a dual encoder does: the constraint
that each image has exactly 5 captions is not used.

The Monte-Carlo check samples `--check-draws` captions of one scene per
object count with the generator's own `_sample_caption` (seeded
random.Random) and compares the facts' frequencies with P(c | s): total
variation, and Pearson's chi-square over facts expected at least 5 times
(the rest pooled) with its Wilson-Hilferty z; then the same for the captions
of `_scene_captions`, which applies the repeated-text rejection.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from collections import Counter, defaultdict
from fractions import Fraction
from typing import Callable, Hashable, Sequence

import numpy as np

from cora_keras import retrieval
from cora_keras.data import demo_world as dw
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph

# A caption's facts: ((name, attributes) per entity,
#                     (subject, predicate, object) per relation)
FactsKey = tuple[
    tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[int, str, int], ...]
]

_GROUPS = [group for group, _ in dw._ATTRIBUTE_GROUPS]
_GROUP_VALUES = [values for _, values in dw._ATTRIBUTE_GROUPS]
_MAX_OBJECTS = 5
_CHI2_MIN_EXPECTED = 5.0


def facts_key(entities: Sequence[Entity], relations: Sequence[Relation]) -> FactsKey:
    """The hashable facts of a caption."""
    return (
        tuple((e.name, tuple(e.attributes)) for e in entities),
        tuple((r.subject, r.predicate, r.object) for r in relations),
    )


# ----------------------------------------------------------------------------
# Exact distribution of a sampler driven by random.Random._randbelow


class _ScriptedRandom(random.Random):
    """A Random whose integer draws come from a script (0 past its end)."""

    def __init__(self, script: Sequence[int]) -> None:
        super().__init__(0)
        self.script = script
        self.ranges: list[int] = []

    def _randbelow(self, n: int) -> int:
        i = len(self.ranges)
        self.ranges.append(n)
        return self.script[i] if i < len(self.script) else 0

    def random(self) -> float:
        raise NotImplementedError(
            "only integer draws (shuffle, randint, choice) can be enumerated"
        )


def outcome_distribution(
    draw: Callable[[random.Random], Hashable],
) -> dict[Hashable, Fraction]:
    """The exact distribution of `draw(rng)` over every answer to its integer draws."""
    distribution: dict[Hashable, Fraction] = defaultdict(Fraction)
    pending: list[tuple[int, ...]] = [()]
    while pending:
        script = pending.pop()
        rng = _ScriptedRandom(script)
        outcome = draw(rng)
        distribution[outcome] += Fraction(1, math.prod(rng.ranges))
        answers = list(script) + [0] * (len(rng.ranges) - len(script))
        for i in range(len(script), len(rng.ranges)):
            pending.extend((*answers[:i], a) for a in range(1, rng.ranges[i]))
    return dict(distribution)


# ----------------------------------------------------------------------------
# The likelihood of a caption's facts given a scene


def true_relations(scene: dw.Scene) -> dict[tuple[int, int], list[str]]:
    """The true predicates of each ordered pair of objects, as in `_scene_captions`."""
    return {
        (i, j): [p for p in dw.RELATIONS if dw.relation_holds(p, a, b)]
        for i, a in enumerate(scene.objects)
        for j, b in enumerate(scene.objects)
        if i != j
    }


def _normalised(weights: dict[int, float]) -> dict[int, Fraction]:
    exact = {k: Fraction(str(w)) for k, w in weights.items()}
    total = sum(exact.values())
    return {k: w / total for k, w in exact.items()}


class SceneLikelihood:
    """P(caption facts | scene) under the demo world's caption sampler."""

    def __init__(self, scene: dw.Scene) -> None:
        self.relations = true_relations(scene)
        count = len(scene.objects)
        self.descriptions = [
            outcome_distribution(
                lambda rng, k=k: facts_key([dw._describe(rng, scene, k)], [])[0][0]
            )
            for k in range(count)
        ]
        # (m, edges) -> P(a template with these edges) / number of orders fitting them.
        self.template_mass: dict[tuple[int, tuple[tuple[int, int], ...]], Fraction] = {}
        mentions = _normalised(
            {m: w for m, w in dw._MENTION_WEIGHTS.items() if m <= count}
        )
        for m, p_mentions in mentions.items():
            starts = _normalised(dw._RELATION_WEIGHTS[m])
            # Probability of falling back into the current relation count.
            reached = Fraction(0)
            for r in range(max(starts), -1, -1):
                templates = dw._TEMPLATES[(m, r)]
                entered = starts.get(r, Fraction(0)) + reached
                misses = 0
                for _, edges in templates:
                    fitting = self._fitting_orders(count, m, edges)
                    if fitting == 0:
                        misses += 1
                        continue
                    mass = p_mentions * entered / len(templates) / fitting
                    key = (m, edges)
                    self.template_mass[key] = (
                        self.template_mass.get(key, Fraction(0)) + mass
                    )
                reached = entered * Fraction(misses, len(templates))

    def _fitting_orders(
        self, count: int, m: int, edges: tuple[tuple[int, int], ...]
    ) -> int:
        return sum(
            all(self.relations[(o[s], o[t])] for s, t in edges)
            for o in itertools.permutations(range(count), m)
        )

    def __call__(self, key: FactsKey) -> Fraction:
        entities, relations = key
        edges = tuple((s, o) for s, _, o in relations)
        mass = self.template_mass.get((len(entities), edges))
        if mass is None:
            return Fraction(0)
        candidates = [
            [(k, d[entity]) for k, d in enumerate(self.descriptions) if entity in d]
            for entity in entities
        ]
        total = Fraction(0)
        for assignment in itertools.product(*candidates):
            objects = [k for k, _ in assignment]
            if len(set(objects)) < len(objects):
                continue
            p = math.prod((q for _, q in assignment), start=Fraction(1))
            for s, predicate, o in relations:
                predicates = self.relations[(objects[s], objects[o])]
                if predicate not in predicates:
                    break
                p /= len(predicates)
            else:
                total += p
        return total * mass


# ----------------------------------------------------------------------------
# Which pairs can be true: entity-object match counts, vectorised


def _object_codes(scenes: Sequence[dw.Scene]) -> np.ndarray:
    """(scenes, 5, 4) indices of shape and attribute groups per object; -1 pads."""
    codes = np.full((len(scenes), _MAX_OBJECTS, 1 + len(_GROUPS)), -1, dtype=np.int64)
    for s, scene in enumerate(scenes):
        for k, obj in enumerate(scene.objects):
            codes[s, k, 0] = dw.SHAPES.index(obj.shape)
            for g, (group, values) in enumerate(zip(_GROUPS, _GROUP_VALUES), start=1):
                codes[s, k, g] = values.index(obj.attribute(group))
    return codes


def _entity_codes(entities: Sequence[tuple[str, tuple[str, ...]]]) -> np.ndarray:
    """(entities, 4): shape index and, per attribute group, the value named or -1."""
    codes = np.full((len(entities), 1 + len(_GROUPS)), -1, dtype=np.int64)
    for e, (name, attributes) in enumerate(entities):
        codes[e, 0] = dw.SHAPES.index(name)
        for attribute in attributes:
            g = _GROUPS.index(dw._ATTRIBUTE_GROUP[attribute])
            codes[e, 1 + g] = _GROUP_VALUES[g].index(attribute)
    return codes


def match_counts(
    keys: Sequence[FactsKey], scenes: Sequence[dw.Scene]
) -> tuple[np.ndarray, np.ndarray]:
    """Per (caption, scene), the fewest and the most objects any one entity matches."""
    entities = [entity for entity_list, _ in keys for entity in entity_list]
    wanted = _entity_codes(entities)
    objects = _object_codes(scenes)
    counts = np.zeros((len(entities), len(scenes)), dtype=np.int8)
    for k in range(_MAX_OBJECTS):
        present = objects[None, :, k, 0] >= 0
        match = present & (wanted[:, None, 0] == objects[None, :, k, 0])
        for g in range(1, 1 + len(_GROUPS)):
            match &= (wanted[:, None, g] < 0) | (
                wanted[:, None, g] == objects[None, :, k, g]
            )
        counts += match
    starts = np.cumsum([0] + [len(entity_list) for entity_list, _ in keys[:-1]])
    return np.minimum.reduceat(counts, starts, axis=0), np.maximum.reduceat(
        counts, starts, axis=0
    )


# ----------------------------------------------------------------------------
# Expected recalls under random tie-breaking


def _expected_text_to_image(sims: np.ndarray, k: int) -> np.ndarray:
    """Per caption, P(its image ranks in the top k) with ties in random order."""
    captions = np.arange(sims.shape[1])
    own = sims[captions // retrieval.CAPTIONS_PER_IMAGE, captions]
    greater = np.count_nonzero(sims > own, axis=0)
    others_equal = np.count_nonzero(sims == own, axis=0) - 1
    return np.clip((k - greater) / (others_equal + 1), 0.0, 1.0)


def _expected_image_to_text(sims: np.ndarray, k: int) -> np.ndarray:
    """Per image, P(one of its captions ranks in the top k), ties in random order."""
    per = retrieval.CAPTIONS_PER_IMAGE
    hits = np.empty(sims.shape[0])
    for i, row in enumerate(sims):
        own = row[per * i : per * (i + 1)]
        best = own.max()
        slots = k - np.count_nonzero(row > best)  # places left for the tied block
        tied = int(np.count_nonzero(row == best))
        tied_own = int(np.count_nonzero(own == best))
        # The first own caption of the tied block lands within `slots` unless
        # the first `slots` places all go to tied captions of other images.
        if slots <= 0:
            hits[i] = 0.0
        elif slots > tied - tied_own:
            hits[i] = 1.0
        else:
            hits[i] = 1.0 - math.comb(tied - tied_own, slots) / math.comb(tied, slots)
    return hits


def expected_recalls(i2t_sims: np.ndarray, t2i_sims: np.ndarray) -> list[float]:
    """i2t R@1/5/10 then t2i R@1/5/10 in percent, each direction by its own scores."""
    return [
        100.0 * float(np.mean(_expected_image_to_text(i2t_sims, k)))
        for k in retrieval.RECALL_LEVELS
    ] + [
        100.0 * float(np.mean(_expected_text_to_image(t2i_sims, k)))
        for k in retrieval.RECALL_LEVELS
    ]


def ties_won_rsum(i2t_sims: np.ndarray, t2i_sims: np.ndarray) -> float:
    """RSUM when every tie is won (the ranks of cora_keras.retrieval)."""
    i2t = retrieval.image_to_text_ranks(i2t_sims)
    t2i = retrieval.text_to_image_ranks(t2i_sims)
    return retrieval.ranks_to_metrics(i2t, t2i).rsum


# ----------------------------------------------------------------------------
# Scoring a split


def score_split(
    scenes: Sequence[dw.Scene], keys: Sequence[FactsKey]
) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    """Scores (scenes, captions) by truth, likelihood and posterior; pairs; timings."""
    timings = {}
    start = time.perf_counter()
    fewest, most = match_counts(keys, scenes)
    timings["match counts"] = time.perf_counter() - start

    start = time.perf_counter()
    truth = np.zeros((len(scenes), len(keys)))
    for c, s in zip(*np.nonzero(fewest >= 1)):
        entities, relations = keys[c]
        graph = SceneGraph(
            "",
            [Entity(name, list(a)) for name, a in entities],
            [Relation(*r) for r in relations],
        )
        truth[s, c] = dw.graph_is_true(scenes[s], graph)
    timings["truth"] = time.perf_counter() - start

    start = time.perf_counter()
    models = [SceneLikelihood(scene) for scene in scenes]
    timings["scene models"] = time.perf_counter() - start

    start = time.perf_counter()
    likelihood = np.zeros((len(scenes), len(keys)))
    posterior = np.zeros((len(scenes), len(keys)))
    unique = (fewest == 1) & (most == 1)
    for c in range(len(keys)):
        scored = {int(s): models[s](keys[c]) for s in np.flatnonzero(unique[c])}
        evidence = sum(scored.values())
        for s, p in scored.items():
            if p:
                likelihood[s, c] = float(p)
                posterior[s, c] = float(p / evidence)
    timings["likelihoods"] = time.perf_counter() - start
    sims = {"truth": truth, "likelihood": likelihood, "posterior": posterior}
    return sims, int(np.count_nonzero(unique)), timings


# ----------------------------------------------------------------------------
# Monte-Carlo check of the likelihood


def facts_distribution(model: SceneLikelihood) -> dict[FactsKey, Fraction]:
    """P(c | s) of every caption's facts the sampler can write for the model's scene."""
    keys = set()
    count = len(model.descriptions)
    for m, edges in model.template_mass:
        for objects in itertools.permutations(range(count), m):
            pairs = [model.relations[(objects[s], objects[t])] for s, t in edges]
            for entities in itertools.product(
                *(model.descriptions[k] for k in objects)
            ):
                for predicates in itertools.product(*pairs):
                    relations = tuple((s, p, t) for (s, t), p in zip(edges, predicates))
                    keys.add((entities, relations))
    return {key: model(key) for key in keys}


def _compare(
    counts: Counter, exact: dict[FactsKey, float], rng: np.random.Generator
) -> str:
    """Total variation (also of a same-size sample of `exact`); pooled chi-square."""
    draws = sum(counts.values())
    keys = list(exact)
    p = np.array([exact[key] for key in keys])
    observed = np.array([counts.get(key, 0) for key in keys])
    outside = draws - int(observed.sum())
    tv = 0.5 * (np.abs(observed / draws - p).sum() + outside / draws)
    reference = 0.5 * np.abs(rng.multinomial(draws, p / p.sum()) / draws - p).sum()
    expected = draws * p
    cells = expected >= _CHI2_MIN_EXPECTED
    chi2 = float(np.sum((observed[cells] - expected[cells]) ** 2 / expected[cells]))
    rest_observed, rest_expected = (
        observed[~cells].sum() + outside,
        expected[~cells].sum(),
    )
    chi2 += (rest_observed - rest_expected) ** 2 / rest_expected
    dof = int(np.count_nonzero(cells))  # the cells and the pooled rest, minus one
    z = ((chi2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return (
        f"draws outside the support {outside}, TV {tv:.4f} (a sample of P itself: "
        f"{reference:.4f}), chi2 {chi2:.1f} / {dof} dof (z {z:+.2f})"
    )


def monte_carlo_check(
    scenes: Sequence[dw.Scene], draws: int, seed: int = 0
) -> list[str]:
    """Sampled facts against P(c | s) on the first scene of each object count."""
    lines = []
    noise = np.random.default_rng(seed)
    for count in range(2, _MAX_OBJECTS + 1):
        s = next(
            (s for s, scene in enumerate(scenes) if len(scene.objects) == count), None
        )
        if s is None:
            continue
        scene, model = scenes[s], SceneLikelihood(scenes[s])
        exact = facts_distribution(model)
        total = sum(exact.values())
        exact = {key: float(p) for key, p in exact.items()}
        relations = true_relations(scene)
        rng = random.Random(f"demo ceiling check {seed} {s}")
        single = Counter(
            facts_key(c.entities, c.facts(s).relations)
            for c in (dw._sample_caption(rng, scene, relations) for _ in range(draws))
        )
        rejected = Counter(
            facts_key(c.entities, c.facts(s).relations)
            for _ in range(draws // dw.CAPTIONS_PER_IMAGE)
            for c in dw._scene_captions(rng, scene)
        )
        lines.append(
            f"scene {s} ({count} objects): {len(exact)} possible facts, P sums to "
            f"{'exactly 1' if total == 1 else total}"
        )
        lines.append(
            f"  {draws} _sample_caption draws: {_compare(single, exact, noise)}"
        )
        lines.append(
            f"  {draws} _scene_captions captions: {_compare(rejected, exact, noise)}"
        )
    return lines


# ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world", required=True, help="a generated demo world directory"
    )
    parser.add_argument("--split", default="test", choices=("dev", "test"))
    parser.add_argument(
        "--check-draws",
        type=int,
        default=20000,
        help="Monte-Carlo captions per checked scene (0: skip)",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    scenes = dw.load_scenes(args.world, args.split)
    facts = dw.load_caption_facts(args.world, args.split)
    keys = [facts_key(f.entities, f.relations) for f in facts]
    if len(keys) != dw.CAPTIONS_PER_IMAGE * len(scenes):
        raise ValueError(f"{len(keys)} captions for {len(scenes)} scenes")
    sims, pairs, timings = score_split(scenes, keys)
    own = sims["likelihood"][
        np.arange(len(keys)) // dw.CAPTIONS_PER_IMAGE, np.arange(len(keys))
    ]
    if not np.all(own > 0):
        raise AssertionError(
            f"{np.count_nonzero(own == 0)} captions are impossible for their own scene"
        )

    print(f"{args.world}, {args.split}: {len(scenes)} scenes, {len(keys)} captions")
    print(
        f"{'ranking':<34} {'i2t R@1 R@5 R@10':>20} {'t2i R@1 R@5 R@10':>20}"
        f" {'RSUM':>7} {'ties won':>9}"
    )
    rows = (
        ("truth (graph_is_true)", sims["truth"], sims["truth"]),
        ("P(c|s) both ways", sims["likelihood"], sims["likelihood"]),
        ("Bayes: i2t P(s|c), t2i P(c|s)", sims["posterior"], sims["likelihood"]),
    )
    for name, i2t, t2i in rows:
        recalls = expected_recalls(i2t, t2i)
        print(
            f"{name:<34} {' '.join(f'{r:6.1f}' for r in recalls[:3]):>20} "
            f"{' '.join(f'{r:6.1f}' for r in recalls[3:]):>20} {sum(recalls):7.1f} "
            f"{ties_won_rsum(i2t, t2i):9.1f}"
        )
    print(
        f"pairs given a likelihood: {pairs}; seconds: "
        + ", ".join(f"{name} {t:.1f}" for name, t in timings.items())
        + f"; total {time.perf_counter() - started:.1f}"
    )
    if args.check_draws:
        started = time.perf_counter()
        for line in monte_carlo_check(scenes, args.check_draws):
            print(line)
        print(f"Monte-Carlo check: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
