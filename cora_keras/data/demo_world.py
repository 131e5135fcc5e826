"""The demo world: a generated dataset and its probes (DATA.md section 4).

Scenes of 2 to 5 objects, each a shape x colour x size x material at a
position, seen through 36 region feature rows, with 5 captions per scene
that mention 1 to 3 objects, 0 to 3 attributes each and 0 to 2 spatial
relations. Written in the precomp layout (DATA.md section 2) so the demo
takes the same path as real data; nothing is downloaded.

Geometry (the truth of every relation). An object sits at `x` (0 = left,
1 = right) and `y` (0 = bottom, 1 = top) in the image plane and at `depth`
(0 = nearest the viewer, 1 = farthest). For subject S and object O:
  - "to the left of" / "to the right of": x_O - x_S >= 0.2 / x_S - x_O >= 0.2
  - "above" / "below":      y_S - y_O >= 0.2 / y_O - y_S >= 0.2
  - "in front of" / "behind": depth_O - depth_S >= 0.2 / depth_S - depth_O >= 0.2
  - "next to": distance in the image plane, sqrt(dx^2 + dy^2), <= 0.25
    (symmetric).
Its box is the square of half side 0.05 (small) or 0.09 (large) times
(1.25 - 0.5 depth) centred on (x, y), so box scale shows size and depth.

Region rows. Every scene has 36 valid rows (as in real precomp features):
first the views of its objects (1 to 3 rows each, in shuffled order, like
detections sorted by confidence), then background rows. A view row is
`signal + 0.5 * noise`, the signal a fixed seeded non-linear map of the
object's attributes and its box, jittered per view (std 0.01):
  - each attribute value has a random Gaussian code of min(64, F/8) dims,
    split into 4 blocks whose signs flip with the joint value of the other
    three attributes (a balanced random sign table per block): an
    attribute is not linearly readable from a row, its |code| is;
  - the box enters through min(64, F/4) random Fourier features
    sqrt(2) cos(W box + b);
  - codes and box features, concatenated, are mapped to F dims by a random
    Gaussian matrix (injective: fewer inputs than F) with unit variance
    per output dim.
Background rows are N(0, 0.3^2) noise: weaker than object rows (variance
1.25), like low-scoring detections, so that pooling starts from images
that differ (with equal variance, max-pooled raw rows of different scenes
had a cosine of 0.95).

Captions say only true things: relations hold by the geometry above, and
each mentioned object gets enough attributes (beyond its sampled 0 to 3)
that its description matches exactly one object of the scene, so every
caption refers to definite objects (scenes hold no two identical objects).
Templates are plain English that a dependency parser reads as intended
("A large red cube sits to the left of a small metal sphere.", "There is a
blue cone next to a green rubber torus."); the written relation may carry
a verb, the facts name it by its RELATIONS phrase.

Probes (test split). Swap-attribute exchanges the attributes of two
differently named entities of a caption, swap-relation the two noun phrases
at the ends of an asymmetric relation; a negative is kept only when it is
false of the scene. Both keep the caption's bag of words, so a bag-of-words
encoder scores 50% at best.

Files in `out_dir`, per split (train, dev, test):
  {split}_ims.npy             float32 (n, 36, F) region rows
  {split}_caps.txt            captions of image i on lines 5i..5i+4
  {split}_scenes.jsonl        one scene layout per image (objects, row owners)
  {split}_caption_facts.jsonl what each caption says: entities in text order
                              (name, attributes, scene object index) and
                              relations; readable as SceneGraph JSON
  test_probes.jsonl           swap-attribute and swap-relation negatives
  demo_world.json             the generation parameters, written last
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from ..scene_graph.schema import Entity, Relation, SceneGraph, iter_json_lines
from .datasets import cached_scene_graphs

_T = TypeVar("_T")

VERSION = 2
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "ring", "star")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "large")
MATERIALS = ("metal", "rubber", "wooden")
RELATIONS = (
    "to the left of",
    "to the right of",
    "above",
    "below",
    "next to",
    "in front of",
    "behind",
)
SYMMETRIC_RELATIONS = frozenset({"next to"})
SPLITS = ("train", "dev", "test")
PROBE_KINDS = ("swap_attribute", "swap_relation")
PROBES_FILE = "test_probes.jsonl"

NUM_REGIONS = 36
CAPTIONS_PER_IMAGE = 5
DEFAULT_FEATURE_SIZE = 256
MIN_FEATURE_SIZE = 32

AXIS_MARGIN = 0.2
NEAR_DISTANCE = 0.25
HALF_SIDE = {"small": 0.05, "large": 0.09}
MIN_OBJECT_DISTANCE = 0.12
VIEW_JITTER = 0.01
ROW_NOISE = 0.5
BACKGROUND_NOISE = 0.3
GATE_BLOCKS = 4

# Attribute groups in the order they are written before the name.
_ATTRIBUTE_GROUPS = (("size", SIZES), ("colour", COLOURS), ("material", MATERIALS))
_ATTRIBUTE_GROUP = {value: group for group, values in _ATTRIBUTE_GROUPS for value in values}
_CHUNK_SCENES = 250
_VERBS = ("is", "sits", "stands", "is sitting", "is standing", "is lying")
_PLAIN_VERBS = ("is", "sits", "stands")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its attributes and where it is."""

    shape: str
    colour: str
    size: str
    material: str
    x: float
    y: float
    depth: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in the image plane."""
        half = HALF_SIDE[self.size] * (1.25 - 0.5 * self.depth)
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def attribute(self, group: str) -> str:
        return getattr(self, group)


@dataclass
class Scene:
    """The objects of one image and, per region row, its object (-1 = background)."""

    objects: list[SceneObject]
    rows: list[int]


@dataclass
class CaptionFacts:
    """What one caption says: entities in text order, each tied to a scene object."""

    image: int
    caption: str
    entities: list[Entity]
    objects: list[int]
    relations: list[Relation]

    def to_scene_graph(self) -> SceneGraph:
        """The caption's gold scene graph (DATA.md section 1)."""
        return SceneGraph(self.caption, list(self.entities), list(self.relations))


@dataclass
class Probe:
    """A test caption and a minimally edited negative that is false of the image."""

    image: int
    caption_index: int
    positive: str
    negative: str
    kind: str


def relation_holds(predicate: str, subject: SceneObject, obj: SceneObject) -> bool:
    """Whether `subject predicate obj` is true by the module's geometry."""
    if predicate == "to the left of":
        return obj.x - subject.x >= AXIS_MARGIN
    if predicate == "to the right of":
        return subject.x - obj.x >= AXIS_MARGIN
    if predicate == "above":
        return subject.y - obj.y >= AXIS_MARGIN
    if predicate == "below":
        return obj.y - subject.y >= AXIS_MARGIN
    if predicate == "in front of":
        return obj.depth - subject.depth >= AXIS_MARGIN
    if predicate == "behind":
        return subject.depth - obj.depth >= AXIS_MARGIN
    if predicate == "next to":
        return math.hypot(subject.x - obj.x, subject.y - obj.y) <= NEAR_DISTANCE
    raise ValueError(f"unknown relation {predicate!r}; known: {', '.join(RELATIONS)}")


def entity_describes(entity: Entity, obj: SceneObject) -> bool:
    """Whether the entity's name is the object's shape and each attribute is one of its."""
    if entity.name != obj.shape:
        return False
    for attribute in entity.attributes:
        group = _ATTRIBUTE_GROUP.get(attribute)
        if group is None or obj.attribute(group) != attribute:
            return False
    return True


def graph_is_true(scene: Scene, graph: SceneGraph) -> bool:
    """Whether distinct scene objects fit the graph's entities and relations.

    Predicates must be RELATIONS phrases (the form of the caption facts).
    """
    candidates = [
        [k for k, obj in enumerate(scene.objects) if entity_describes(entity, obj)]
        for entity in graph.entities
    ]
    for assignment in itertools.product(*candidates):
        if len(set(assignment)) < len(assignment):
            continue
        if all(
            relation_holds(
                r.predicate,
                scene.objects[assignment[r.subject]],
                scene.objects[assignment[r.object]],
            )
            for r in graph.relations
        ):
            return True
    return False


# ----------------------------------------------------------------------------
# Region features


class _FeatureMap:
    """The seeded non-linear map from (attributes, box) to an F-dim row."""

    def __init__(self, seed: int, feature_size: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.cardinalities = (len(SHAPES), len(COLOURS), len(SIZES), len(MATERIALS))
        code = min(64, feature_size // 8)
        box_code = min(64, feature_size // 4)
        total = int(np.prod(self.cardinalities))
        self.codes = [rng.standard_normal((c, code)) for c in self.cardinalities]
        self.sign_tables = []
        for c in self.cardinalities:
            contexts = total // c
            balanced = np.resize([1.0, -1.0], contexts)
            self.sign_tables.append(
                np.stack([rng.permutation(balanced) for _ in range(GATE_BLOCKS)], axis=1)
            )
        self.block_of_dim = np.arange(code) * GATE_BLOCKS // code
        self.box_weights = rng.normal(0.0, 3.0, (4, box_code))
        self.box_phases = rng.uniform(0.0, 2 * np.pi, box_code)
        hidden = len(self.cardinalities) * code + box_code
        self.projection = rng.standard_normal((hidden, feature_size)) / math.sqrt(hidden)

    def __call__(self, values: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Rows (n, F) for attribute indices (n, 4) and boxes (n, 4)."""
        parts = []
        for a, c in enumerate(self.cardinalities):
            context = np.zeros(len(values), dtype=np.int64)
            for b, other in enumerate(self.cardinalities):
                if b != a:
                    context = context * other + values[:, b]
            signs = self.sign_tables[a][context][:, self.block_of_dim]
            parts.append(self.codes[a][values[:, a]] * signs)
        parts.append(np.sqrt(2.0) * np.cos(boxes @ self.box_weights + self.box_phases))
        return (np.concatenate(parts, axis=1) @ self.projection).astype(np.float32)


def _scene_features(
    scenes: Sequence[Scene], feature_map: _FeatureMap, rng: np.random.Generator
) -> np.ndarray:
    """(len(scenes), 36, F) rows: object views, then background noise."""
    feature_size = feature_map.projection.shape[1]
    out = rng.standard_normal((len(scenes), NUM_REGIONS, feature_size), dtype=np.float32)
    out *= np.float32(BACKGROUND_NOISE)
    where, values, boxes = [], [], []
    for s, scene in enumerate(scenes):
        for r, k in enumerate(scene.rows):
            if k >= 0:
                obj = scene.objects[k]
                where.append((s, r))
                values.append(
                    (
                        SHAPES.index(obj.shape),
                        COLOURS.index(obj.colour),
                        SIZES.index(obj.size),
                        MATERIALS.index(obj.material),
                    )
                )
                boxes.append(obj.box)
    where = np.asarray(where)
    boxes = np.asarray(boxes) + rng.normal(0.0, VIEW_JITTER, (len(boxes), 4))
    noise = rng.standard_normal((len(where), feature_size), dtype=np.float32)
    out[where[:, 0], where[:, 1]] = feature_map(np.asarray(values), boxes) + ROW_NOISE * noise
    return out


# ----------------------------------------------------------------------------
# Scenes


def _sample_scene(rng: random.Random) -> Scene:
    """2 to 5 distinct objects at separated positions, 1 to 3 view rows each."""
    count = rng.randint(2, 5)
    kinds: list[tuple[str, str, str, str]] = []
    while len(kinds) < count:
        kind = (rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), rng.choice(MATERIALS))
        if kind not in kinds:
            kinds.append(kind)
    positions: list[tuple[float, float]] = []
    while len(positions) < count:
        x, y = round(rng.uniform(0.1, 0.9), 3), round(rng.uniform(0.1, 0.9), 3)
        if all(math.hypot(x - px, y - py) >= MIN_OBJECT_DISTANCE for px, py in positions):
            positions.append((x, y))
    objects = [
        SceneObject(*kind, x=x, y=y, depth=round(rng.random(), 3))
        for kind, (x, y) in zip(kinds, positions)
    ]
    views = [k for k in range(count) for _ in range(rng.randint(1, 3))]
    rng.shuffle(views)
    return Scene(objects, views + [-1] * (NUM_REGIONS - len(views)))


# ----------------------------------------------------------------------------
# Captions

# (template, relation edges as (subject, object) placeholder indices); the
# placeholders {0} {1} {2} stand for noun phrases in text order, {r0} {r1}
# for predicates, {v} for a verb phrase and {w} for a one-word verb.
_TEMPLATES: dict[tuple[int, int], tuple[tuple[str, tuple[tuple[int, int], ...]], ...]] = {
    (1, 0): (
        ("{0}.", ()),
        ("There is {0}.", ()),
        ("Here is {0}.", ()),
        ("This is {0}.", ()),
    ),
    (2, 0): (
        ("{0} and {1}.", ()),
        ("There are {0} and {1}.", ()),
        ("There is {0} and {1}.", ()),
        ("Here are {0} and {1}.", ()),
    ),
    (2, 1): (
        ("{0} {v} {r0} {1}.", ((0, 1),)),
        ("There is {0} {r0} {1}.", ((0, 1),)),
        ("{0} {r0} {1}.", ((0, 1),)),
        ("{r0} {0} there is {1}.", ((1, 0),)),
    ),
    (3, 0): (
        ("{0}, {1} and {2}.", ()),
        ("There are {0}, {1} and {2}.", ()),
        ("Here are {0}, {1} and {2}.", ()),
    ),
    (3, 1): (
        ("{0} {v} {r0} {1}, and there is {2}.", ((0, 1),)),
        ("There is {0}, and {1} {v} {r0} {2}.", ((1, 2),)),
    ),
    (3, 2): (
        ("{0} {v} {r0} {1} and {v} {r1} {2}.", ((0, 1), (0, 2))),
        ("{0} {v} {r0} {1}, which {w} {r1} {2}.", ((0, 1), (1, 2))),
        ("There is {0} {r0} {1} that {w} {r1} {2}.", ((0, 1), (1, 2))),
    ),
}
_MENTION_WEIGHTS = {1: 0.25, 2: 0.45, 3: 0.30}
_RELATION_WEIGHTS = {1: {0: 1.0}, 2: {0: 0.4, 1: 0.6}, 3: {0: 0.2, 1: 0.4, 2: 0.4}}


@dataclass
class _Caption:
    """A sampled caption before rendering: its template and what fills it."""

    template: str
    edges: tuple[tuple[int, int], ...]
    entities: list[Entity]
    objects: list[int]
    predicates: list[str]
    verb: str
    plain_verb: str

    def render(self, entities: Sequence[Entity]) -> str:
        """The caption with these entities in the noun phrase slots."""
        phrases = []
        for entity in entities:
            words = " ".join([*entity.attributes, entity.name])
            phrases.append(("an " if words[0] in "aeiou" else "a ") + words)
        predicates = {f"r{i}": p for i, p in enumerate(self.predicates)}
        text = self.template.format(*phrases, v=self.verb, w=self.plain_verb, **predicates)
        return text[0].upper() + text[1:]

    def graph(self, entities: Sequence[Entity]) -> SceneGraph:
        """The statement of the caption with these entities in the noun phrase slots."""
        relations = [Relation(s, p, o) for (s, o), p in zip(self.edges, self.predicates)]
        return SceneGraph(self.render(entities), list(entities), relations)

    def facts(self, image: int) -> CaptionFacts:
        graph = self.graph(self.entities)
        return CaptionFacts(image, graph.caption, graph.entities, self.objects, graph.relations)


def _weighted(rng: random.Random, weights: dict[int, float]) -> int:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _describe(rng: random.Random, scene: Scene, k: int) -> Entity:
    """Object k with 0 to 3 sampled attributes, more until it is the only match."""
    obj = scene.objects[k]
    groups = [group for group, _ in _ATTRIBUTE_GROUPS]
    rng.shuffle(groups)
    count = rng.randint(0, 3)
    chosen, remaining = set(groups[:count]), groups[count:]
    rivals = [o for i, o in enumerate(scene.objects) if i != k and o.shape == obj.shape]
    while any(all(o.attribute(g) == obj.attribute(g) for g in chosen) for o in rivals):
        chosen.add(remaining.pop(0))
    return Entity(obj.shape, [obj.attribute(g) for g, _ in _ATTRIBUTE_GROUPS if g in chosen])


def _sample_caption(
    rng: random.Random, scene: Scene, true_relations: dict[tuple[int, int], list[str]]
) -> _Caption:
    mentions = _weighted(
        rng, {m: w for m, w in _MENTION_WEIGHTS.items() if m <= len(scene.objects)}
    )
    relations = _weighted(rng, _RELATION_WEIGHTS[mentions])
    orders = list(itertools.permutations(range(len(scene.objects)), mentions))
    rng.shuffle(orders)
    while True:
        template, edges = rng.choice(_TEMPLATES[(mentions, relations)])
        fitting = (o for o in orders if all(true_relations[(o[s], o[t])] for s, t in edges))
        objects = next(fitting, None)
        if objects is None:
            relations -= 1  # no objects of this scene fit the relations
            continue
        return _Caption(
            template=template,
            edges=edges,
            entities=[_describe(rng, scene, k) for k in objects],
            objects=list(objects),
            predicates=[rng.choice(true_relations[(objects[s], objects[t])]) for s, t in edges],
            verb=rng.choice(_VERBS),
            plain_verb=rng.choice(_PLAIN_VERBS),
        )


def _probes(scene: Scene, caption: _Caption) -> dict[str, str]:
    """The valid swap negatives of a caption: a new statement, false of the scene.

    Swap-attribute exchanges the attributes of two differently named
    entities; swap-relation exchanges the subject and object of an
    asymmetric relation. The first valid pair or relation is used.
    """
    negatives: dict[str, str] = {}
    for i, j in itertools.combinations(range(len(caption.entities)), 2):
        a, b = caption.entities[i], caption.entities[j]
        if a.name == b.name or a.attributes == b.attributes:
            continue
        swapped = list(caption.entities)
        swapped[i], swapped[j] = Entity(a.name, b.attributes), Entity(b.name, a.attributes)
        if not graph_is_true(scene, caption.graph(swapped)):
            negatives["swap_attribute"] = caption.render(swapped)
            break
    for (s, o), predicate in zip(caption.edges, caption.predicates):
        if predicate in SYMMETRIC_RELATIONS:
            continue
        swapped = list(caption.entities)
        swapped[s], swapped[o] = swapped[o], swapped[s]
        if not graph_is_true(scene, caption.graph(swapped)):
            negatives["swap_relation"] = caption.render(swapped)
            break
    return negatives


def _scene_captions(rng: random.Random, scene: Scene) -> list[_Caption]:
    """5 distinct captions of a scene."""
    true_relations = {
        (i, j): [p for p in RELATIONS if relation_holds(p, a, b)]
        for i, a in enumerate(scene.objects)
        for j, b in enumerate(scene.objects)
        if i != j
    }
    captions: list[_Caption] = []
    seen: set[str] = set()
    while len(captions) < CAPTIONS_PER_IMAGE:
        caption = _sample_caption(rng, scene, true_relations)
        text = caption.render(caption.entities)
        if text not in seen:
            seen.add(text)
            captions.append(caption)
    return captions


# ----------------------------------------------------------------------------
# Files


def _scene_to_dict(scene: Scene) -> dict:
    return {"objects": [asdict(o) for o in scene.objects], "rows": scene.rows}


def _facts_to_dict(facts: CaptionFacts) -> dict:
    graph = facts.to_scene_graph().to_dict()
    for entity, k in zip(graph["entities"], facts.objects):
        entity["object"] = k
    return {"image": facts.image, **graph}


def _write_text(path: str, lines: Sequence[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def _write_split(
    out_dir: str,
    split: str,
    scenes_count: int,
    seed: int,
    feature_map: _FeatureMap,
    progress: bool,
) -> None:
    """Write one split's features, captions, layouts, facts (and test probes)."""
    started = time.perf_counter()
    feature_size = feature_map.projection.shape[1]
    ims_path = os.path.join(out_dir, f"{split}_ims.npy")
    ims_tmp = f"{ims_path}.tmp-{os.getpid()}.npy"
    ims = np.lib.format.open_memmap(
        ims_tmp, mode="w+", dtype=np.float32, shape=(scenes_count, NUM_REGIONS, feature_size)
    )
    captions, scene_lines, fact_lines, probe_lines = [], [], [], []
    for chunk, start in enumerate(range(0, scenes_count, _CHUNK_SCENES)):
        rng = random.Random(f"cora-keras demo world {seed} {split} {chunk}")
        scenes = [_sample_scene(rng) for _ in range(min(_CHUNK_SCENES, scenes_count - start))]
        for image, scene in enumerate(scenes, start=start):
            scene_lines.append(json.dumps(_scene_to_dict(scene)))
            for c, caption in enumerate(_scene_captions(rng, scene)):
                facts = caption.facts(image)
                captions.append(facts.caption)
                fact_lines.append(json.dumps(_facts_to_dict(facts)))
                if split == "test":
                    for kind, negative in _probes(scene, caption).items():
                        index = CAPTIONS_PER_IMAGE * image + c
                        probe = Probe(image, index, facts.caption, negative, kind)
                        probe_lines.append(json.dumps(asdict(probe)))
        features_rng = np.random.default_rng([seed, SPLITS.index(split) + 1, chunk])
        ims[start : start + len(scenes)] = _scene_features(scenes, feature_map, features_rng)
    ims.flush()
    del ims
    os.replace(ims_tmp, ims_path)
    _write_text(os.path.join(out_dir, f"{split}_caps.txt"), captions)
    _write_text(os.path.join(out_dir, f"{split}_scenes.jsonl"), scene_lines)
    _write_text(os.path.join(out_dir, f"{split}_caption_facts.jsonl"), fact_lines)
    if split == "test":
        _write_text(os.path.join(out_dir, PROBES_FILE), probe_lines)
    if progress:
        print(
            f"demo world: {split}: {scenes_count} scenes, {len(captions)} captions"
            f"{f', {len(probe_lines)} probes' if split == 'test' else ''}"
            f" in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )


def _output_files() -> list[str]:
    names = [
        f"{split}_{suffix}"
        for split in SPLITS
        for suffix in ("ims.npy", "caps.txt", "scenes.jsonl", "caption_facts.jsonl")
    ]
    return names + [PROBES_FILE]


def generate_demo_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    train_scenes: int = 6000,
    dev_scenes: int = 500,
    test_scenes: int = 1000,
    feature_size: int = DEFAULT_FEATURE_SIZE,
    progress: bool = True,
) -> str:
    """Write the demo world to `out_dir` (kept as is when it already matches); return the path.

    Each split depends only on the seed, its own size and the feature size,
    so changing the train size leaves dev and test unchanged.
    """
    sizes = {"train_scenes": train_scenes, "dev_scenes": dev_scenes, "test_scenes": test_scenes}
    for name, value in {"seed": seed, **sizes}.items():
        minimum = 0 if name == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(
                f"generate_demo_world: {name} = {value!r} must be an integer >= {minimum}"
            )
    if not isinstance(feature_size, int) or feature_size < MIN_FEATURE_SIZE:
        raise ValueError(
            f"generate_demo_world: feature_size = {feature_size!r} must be an integer "
            f">= {MIN_FEATURE_SIZE}"
        )
    out_dir = os.fspath(out_dir)
    description = {
        "generator": "cora_keras.data.demo_world",
        "version": VERSION,
        "seed": seed,
        **sizes,
        "feature_size": feature_size,
        "num_regions": NUM_REGIONS,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "files": _output_files(),
    }
    meta_path = os.path.join(out_dir, "demo_world.json")
    if _matches(meta_path, description):
        if progress:
            print(f"demo world: {out_dir} is up to date", file=sys.stderr)
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    feature_map = _FeatureMap(seed, feature_size)
    for split in SPLITS:
        _write_split(out_dir, split, sizes[f"{split}_scenes"], seed, feature_map, progress)
    _write_text(meta_path, [json.dumps(description, indent=2)])
    return out_dir


def _matches(meta_path: str, description: dict) -> bool:
    """Whether a complete demo world with these parameters is already on disk."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError):
        return False
    directory = os.path.dirname(meta_path)
    return existing == description and all(
        os.path.exists(os.path.join(directory, name)) for name in description["files"]
    )


# ----------------------------------------------------------------------------
# Reading back


def _field(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} = {value!r} has the wrong type")
    return value


def _read_jsonl(path: str, build: Callable[[Any, str], _T]) -> list[_T]:
    return [build(data, where) for data, where in iter_json_lines(path)]


def _scene_from_dict(data: Any, where: str) -> Scene:
    objects = []
    for k, item in enumerate(_field(data, "objects", list, where)):
        at = f"{where}: objects[{k}]"
        values = {
            key: _field(item, key, str, at) for key in ("shape", "colour", "size", "material")
        }
        for key, allowed in (
            ("shape", SHAPES),
            ("colour", COLOURS),
            ("size", SIZES),
            ("material", MATERIALS),
        ):
            if values[key] not in allowed:
                raise ValueError(f"{at}: field {key!r} = {values[key]!r} is not one of {allowed}")
        position = {key: float(_field(item, key, (int, float), at)) for key in ("x", "y", "depth")}
        objects.append(SceneObject(**values, **position))
    rows = _field(data, "rows", list, where)
    if len(rows) != NUM_REGIONS or not all(
        isinstance(r, int) and -1 <= r < len(objects) for r in rows
    ):
        raise ValueError(
            f"{where}: field 'rows' must hold {NUM_REGIONS} object indices in [-1, {len(objects)})"
        )
    return Scene(objects, rows)


def _facts_from_dict(data: Any, where: str) -> CaptionFacts:
    graph = SceneGraph.from_dict(data, where)
    objects = [
        _field(entity, "object", int, f"{where}: entities[{i}]")
        for i, entity in enumerate(data["entities"])
    ]
    return CaptionFacts(
        _field(data, "image", int, where), graph.caption, graph.entities, objects, graph.relations
    )


def _probe_from_dict(data: Any, where: str) -> Probe:
    probe = Probe(
        image=_field(data, "image", int, where),
        caption_index=_field(data, "caption_index", int, where),
        positive=_field(data, "positive", str, where),
        negative=_field(data, "negative", str, where),
        kind=_field(data, "kind", str, where),
    )
    if probe.kind not in PROBE_KINDS:
        raise ValueError(f"{where}: field 'kind' = {probe.kind!r} is not one of {PROBE_KINDS}")
    return probe


def load_scenes(data_dir: str | os.PathLike, split: str) -> list[Scene]:
    """The scene layouts of a split, one per image."""
    return _read_jsonl(os.path.join(os.fspath(data_dir), f"{split}_scenes.jsonl"), _scene_from_dict)


def load_caption_facts(data_dir: str | os.PathLike, split: str) -> list[CaptionFacts]:
    """What each caption of a split says, one per caption line."""
    path = os.path.join(os.fspath(data_dir), f"{split}_caption_facts.jsonl")
    return _read_jsonl(path, _facts_from_dict)


def load_probes(data_dir: str | os.PathLike) -> list[Probe]:
    """The test split's swap probes."""
    return _read_jsonl(os.path.join(os.fspath(data_dir), PROBES_FILE), _probe_from_dict)


def load_probe_negative_graphs(data_dir: str | os.PathLike, parse_processes: int = 1) -> list[SceneGraph]:
    """Scene graphs of the probes' negatives in probe order, parsed once and
    cached in `scene_graphs/test_probes.jsonl` (like a split's captions)."""
    source = os.path.join(os.fspath(data_dir), PROBES_FILE)
    graphs_path = os.path.join(os.fspath(data_dir), "scene_graphs", PROBES_FILE)
    negatives = [probe.negative for probe in load_probes(data_dir)]
    return cached_scene_graphs(source, graphs_path, negatives, parse_processes)


def score_probes(
    probes: Sequence[Probe],
    image_embeddings: np.ndarray,
    positive_caption_embeddings: np.ndarray,
    negative_caption_embeddings: np.ndarray,
) -> dict[str, float]:
    """Percent of probes, per kind, whose image scores the positive strictly above the negative.

    `image_embeddings` (n_images, D) is indexed by `probe.image`; the caption
    embeddings (len(probes), D) follow the probes' order. Similarity is the
    dot product; a kind without probes scores NaN.
    """
    images = np.asarray(image_embeddings, dtype=np.float64)
    positives = np.asarray(positive_caption_embeddings, dtype=np.float64)
    negatives = np.asarray(negative_caption_embeddings, dtype=np.float64)
    for name, array in (
        ("positive_caption_embeddings", positives),
        ("negative_caption_embeddings", negatives),
    ):
        if array.ndim != 2 or array.shape[0] != len(probes):
            raise ValueError(
                f"score_probes: {name} has shape {array.shape}, expected ({len(probes)}, D)"
            )
    if (
        images.ndim != 2
        or images.shape[1] != positives.shape[1]
        or negatives.shape[1] != positives.shape[1]
    ):
        raise ValueError(
            f"score_probes: embedding sizes differ (images {images.shape}, positives "
            f"{positives.shape}, negatives {negatives.shape})"
        )
    index = np.asarray([p.image for p in probes], dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= len(images)):
        bad = int(np.flatnonzero((index < 0) | (index >= len(images)))[0])
        raise ValueError(
            f"score_probes: probes[{bad}].image = {index[bad]} is not an index into "
            f"{len(images)} image embeddings"
        )
    image_rows = images[index]
    wins = np.sum(image_rows * positives, axis=1) > np.sum(image_rows * negatives, axis=1)
    kinds = np.asarray([p.kind for p in probes])
    return {
        kind: float(100.0 * wins[kinds == kind].mean()) if np.any(kinds == kind) else math.nan
        for kind in PROBE_KINDS
    }
