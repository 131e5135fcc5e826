"""Tests of the demo world: files, truth of captions and probes, features."""

import itertools
import json
import math
import os
import re

import numpy as np
import pytest

from cora_keras.data import demo_world as dw
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph

SPLIT_SIZES = {"train": 400, "dev": 10, "test": 100}
FEATURE_SIZE = 64

# The geometry of the module docstring, written out again as the reference.
_GEOMETRY = {
    "to the left of": lambda s, o: o.x - s.x >= 0.2,
    "to the right of": lambda s, o: s.x - o.x >= 0.2,
    "above": lambda s, o: s.y - o.y >= 0.2,
    "below": lambda s, o: o.y - s.y >= 0.2,
    "in front of": lambda s, o: o.depth - s.depth >= 0.2,
    "behind": lambda s, o: s.depth - o.depth >= 0.2,
    "next to": lambda s, o: (s.x - o.x) ** 2 + (s.y - o.y) ** 2 <= 0.25**2,
}
_ATTRIBUTES = dw.SIZES + dw.COLOURS + dw.MATERIALS
_NOUN_PHRASE = re.compile(
    r"\ban? ((?:(?:%s) )*)(%s)\b" % ("|".join(_ATTRIBUTES), "|".join(dw.SHAPES)),
    re.IGNORECASE,
)


def _fits(entity, obj):
    own = {obj.size, obj.colour, obj.material}
    return entity.name == obj.shape and set(entity.attributes) <= own


def _is_true(scene, entities, relations):
    """Brute force: distinct objects fitting every entity and relation."""
    for chosen in itertools.permutations(range(len(scene.objects)), len(entities)):
        objects = [scene.objects[k] for k in chosen]
        if all(_fits(e, o) for e, o in zip(entities, objects)) and all(
            _GEOMETRY[r.predicate](objects[r.subject], objects[r.object]) for r in relations
        ):
            return True
    return False


def _noun_phrases(text):
    return [
        Entity(m.group(2).lower(), m.group(1).lower().split()) for m in _NOUN_PHRASE.finditer(text)
    ]


def _bag(text):
    return sorted(re.findall(r"[a-z]+", text.lower()))


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _generate(path, seed=3, train=400, dev=10, test=100, feature_size=FEATURE_SIZE):
    return dw.generate_demo_world(
        path,
        seed=seed,
        train_scenes=train,
        dev_scenes=dev,
        test_scenes=test,
        feature_size=feature_size,
        progress=False,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("demo_world"))


def test_files_shapes_dtypes_and_counts(world):
    for split, n in SPLIT_SIZES.items():
        ims = np.load(os.path.join(world, f"{split}_ims.npy"), mmap_mode="r")
        assert ims.shape == (n, dw.NUM_REGIONS, FEATURE_SIZE)
        assert ims.dtype == np.float32
        assert np.all(np.isfinite(ims))
        captions = _read_lines(os.path.join(world, f"{split}_caps.txt"))
        assert len(captions) == 5 * n
        facts = dw.load_caption_facts(world, split)
        assert [f.caption for f in facts] == captions
        assert [f.image for f in facts] == [i // 5 for i in range(5 * n)]
        scenes = dw.load_scenes(world, split)
        assert len(scenes) == n
        for i, scene in enumerate(scenes):
            assert 2 <= len(scene.objects) <= 5
            kinds = {(o.shape, o.colour, o.size, o.material) for o in scene.objects}
            assert len(kinds) == len(scene.objects)
            views = [r for r in scene.rows if r >= 0]
            assert scene.rows[: len(views)] == views, "object rows come first"
            assert sorted(set(views)) == list(range(len(scene.objects)))
            assert max(views.count(k) for k in set(views)) <= 3
            assert len(set(captions[5 * i : 5 * i + 5])) == 5
    with open(os.path.join(world, "demo_world.json"), encoding="utf-8") as f:
        description = json.load(f)
    assert description["feature_size"] == FEATURE_SIZE
    assert description["test_scenes"] == 100


def test_captions_state_their_facts_and_the_facts_are_true(world):
    for split in dw.SPLITS:
        scenes = dw.load_scenes(world, split)
        for facts in dw.load_caption_facts(world, split):
            scene = scenes[facts.image]
            assert 1 <= len(facts.entities) <= 3
            assert len(facts.relations) <= 2
            assert len(set(facts.objects)) == len(facts.objects)
            assert _noun_phrases(facts.caption) == facts.entities
            for entity, k in zip(facts.entities, facts.objects):
                assert len(entity.attributes) <= 3
                assert _fits(entity, scene.objects[k])
                # The description singles out its object in the scene.
                assert [o for o in scene.objects if _fits(entity, o)] == [scene.objects[k]]
            for relation in facts.relations:
                assert relation.predicate in facts.caption.lower()
                subject = scene.objects[facts.objects[relation.subject]]
                obj = scene.objects[facts.objects[relation.object]]
                assert _GEOMETRY[relation.predicate](subject, obj), (
                    facts.caption,
                    relation,
                )
                assert dw.relation_holds(relation.predicate, subject, obj)
            assert dw.graph_is_true(scene, facts.to_scene_graph())


def test_caption_variety(world):
    facts = dw.load_caption_facts(world, "train")
    assert {len(f.entities) for f in facts} == {1, 2, 3}
    assert {len(f.relations) for f in facts} == {0, 1, 2}
    assert {len(e.attributes) for f in facts for e in f.entities} == {0, 1, 2, 3}
    assert {r.predicate for f in facts for r in f.relations} == set(dw.RELATIONS)


def test_probes_are_minimal_edits_false_of_the_scene(world):
    probes = dw.load_probes(world)
    scenes = dw.load_scenes(world, "test")
    facts = dw.load_caption_facts(world, "test")
    captions = _read_lines(os.path.join(world, "test_caps.txt"))
    assert {p.kind for p in probes} == set(dw.PROBE_KINDS)
    for probe in probes:
        caption = facts[probe.caption_index]
        assert probe.image == caption.image == probe.caption_index // 5
        assert probe.positive == captions[probe.caption_index]
        assert probe.negative != probe.positive
        # Same bag of words: a bag-of-words encoder cannot tell them apart.
        assert _bag(probe.negative) == _bag(probe.positive)
        negative = _noun_phrases(probe.negative)
        assert not _is_true(scenes[probe.image], negative, caption.relations)
        changed = [i for i, (a, b) in enumerate(zip(caption.entities, negative)) if a != b]
        assert len(changed) == 2
        i, j = changed
        if probe.kind == "swap_attribute":
            assert [e.name for e in negative] == [e.name for e in caption.entities]
            assert negative[i].attributes == caption.entities[j].attributes
            assert negative[j].attributes == caption.entities[i].attributes
        else:
            assert (negative[i], negative[j]) == (
                caption.entities[j],
                caption.entities[i],
            )
            assert any(
                {r.subject, r.object} == {i, j} and r.predicate not in dw.SYMMETRIC_RELATIONS
                for r in caption.relations
            )


def test_probe_negatives_are_parsed_once_per_world(world, monkeypatch):
    from cora_keras.data import datasets

    parsed = []

    def parse(captions, processes=1, **kwargs):
        parsed.append((list(captions), processes))
        return [SceneGraph(c, [Entity(c.split()[-1].strip("."))]) for c in captions]

    monkeypatch.setattr(datasets, "parse_captions", parse)
    negatives = [p.negative for p in dw.load_probes(world)]
    graphs = dw.load_probe_negative_graphs(world, parse_processes=2)
    assert parsed == [(negatives, 2)]
    assert [g.caption for g in graphs] == negatives
    assert dw.load_probe_negative_graphs(world) == graphs  # from the cache
    assert len(parsed) == 1
    os.remove(os.path.join(world, "scene_graphs", "test_probes.sha256"))
    os.remove(os.path.join(world, "scene_graphs", "test_probes.jsonl"))


def test_every_eligible_relation_caption_gets_a_swap_relation_probe(world):
    # Descriptions are unique in their scene, so swapping an asymmetric
    # relation's ends always makes a false statement.
    facts = dw.load_caption_facts(world, "test")
    with_probe = {p.caption_index for p in dw.load_probes(world) if p.kind == "swap_relation"}
    eligible = {
        i
        for i, f in enumerate(facts)
        if any(r.predicate not in dw.SYMMETRIC_RELATIONS for r in f.relations)
    }
    assert with_probe == eligible


def test_colour_is_not_linearly_readable_from_object_rows(world):
    scenes = dw.load_scenes(world, "train")
    ims = np.load(os.path.join(world, "train_ims.npy"))
    rows, colours, scene_of_row = [], [], []
    for i, scene in enumerate(scenes):
        for r, k in enumerate(scene.rows):
            if k >= 0:
                rows.append(ims[i, r])
                colours.append(dw.COLOURS.index(scene.objects[k].colour))
                scene_of_row.append(i)
    x, y = np.asarray(rows, dtype=np.float64), np.asarray(colours)
    cut = int(np.searchsorted(scene_of_row, len(scenes) * 2 // 3))  # split by scene
    with_bias = np.c_[x, np.ones(len(x))]
    weights = np.linalg.lstsq(with_bias[:cut], np.eye(8)[y[:cut]], rcond=None)[0]
    linear = np.mean(np.argmax(with_bias[cut:] @ weights, axis=1) == y[cut:])
    distances = (
        np.sum(x[cut:] ** 2, axis=1)[:, None]
        - 2 * x[cut:] @ x[:cut].T
        + np.sum(x[:cut] ** 2, axis=1)
    )
    nearest = np.mean(y[:cut][np.argmin(distances, axis=1)] == y[cut:])
    # Chance is 12.5%; measured about 25% linear and 80% nearest neighbour.
    assert linear < 0.45
    assert nearest > 0.65
    assert nearest > linear + 0.3


def test_background_rows_are_weaker_noise_than_object_rows(world):
    scenes = dw.load_scenes(world, "train")
    ims = np.load(os.path.join(world, "train_ims.npy"))
    owner = np.asarray([s.rows for s in scenes])
    object_var, background_var = ims[owner >= 0].var(), ims[owner < 0].var()
    assert object_var == pytest.approx(1.25, rel=0.15)
    assert background_var == pytest.approx(dw.BACKGROUND_NOISE**2, rel=0.05)
    background = ims[owner < 0]
    assert abs(float(background.mean())) < 0.01


def test_generation_is_deterministic_and_splits_are_independent(tmp_path):
    first = _generate(tmp_path / "a", seed=5, train=30, dev=5, test=20, feature_size=32)
    second = _generate(tmp_path / "b", seed=5, train=30, dev=5, test=20, feature_size=32)
    bigger_train = _generate(tmp_path / "c", seed=5, train=40, dev=5, test=20, feature_size=32)
    other_seed = _generate(tmp_path / "d", seed=6, train=30, dev=5, test=20, feature_size=32)

    def read(root, name):
        with open(os.path.join(root, name), "rb") as f:
            return f.read()

    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(second))
    for name in names:
        assert read(first, name) == read(second, name), name
    for name in names:
        if name.startswith(("dev_", "test_")):
            assert read(first, name) == read(bigger_train, name), name
    assert read(first, "train_ims.npy") != read(bigger_train, "train_ims.npy")
    assert read(first, "test_ims.npy") != read(other_seed, "test_ims.npy")
    assert read(first, "test_caps.txt") != read(other_seed, "test_caps.txt")


def test_generation_is_idempotent(tmp_path):
    root = _generate(tmp_path, seed=1, train=10, dev=5, test=10, feature_size=32)
    stamps = {name: os.stat(os.path.join(root, name)).st_mtime_ns for name in os.listdir(root)}
    assert _generate(tmp_path, seed=1, train=10, dev=5, test=10, feature_size=32) == root
    assert {n: os.stat(os.path.join(root, n)).st_mtime_ns for n in os.listdir(root)} == stamps
    _generate(tmp_path, seed=1, train=10, dev=6, test=10, feature_size=32)
    with open(os.path.join(root, "demo_world.json"), encoding="utf-8") as f:
        assert json.load(f)["dev_scenes"] == 6
    assert len(_read_lines(os.path.join(root, "dev_caps.txt"))) == 30
    os.remove(os.path.join(root, "test_probes.jsonl"))
    _generate(tmp_path, seed=1, train=10, dev=6, test=10, feature_size=32)
    assert os.path.exists(os.path.join(root, "test_probes.jsonl"))


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="feature_size"):
        _generate(tmp_path, feature_size=16)
    with pytest.raises(ValueError, match="test_scenes"):
        _generate(tmp_path, test=0)


def test_relation_holds_and_graph_is_true_on_a_hand_made_scene():
    small_red_cube = dw.SceneObject("cube", "red", "small", "metal", x=0.2, y=0.5, depth=0.1)
    blue_sphere = dw.SceneObject("sphere", "blue", "large", "rubber", x=0.5, y=0.5, depth=0.5)
    large_red_cube = dw.SceneObject("cube", "red", "large", "wooden", x=0.55, y=0.72, depth=0.5)
    assert dw.relation_holds("to the left of", small_red_cube, blue_sphere)  # 0.3 apart in x
    assert not dw.relation_holds("to the right of", small_red_cube, blue_sphere)
    assert dw.relation_holds("in front of", small_red_cube, blue_sphere)  # 0.4 nearer
    assert not dw.relation_holds("behind", small_red_cube, blue_sphere)
    assert not dw.relation_holds("next to", small_red_cube, blue_sphere)  # 0.3 apart
    assert dw.relation_holds("next to", blue_sphere, large_red_cube)  # 0.226 apart
    assert dw.relation_holds("above", large_red_cube, blue_sphere)  # 0.22 higher
    assert not dw.relation_holds("to the right of", large_red_cube, blue_sphere)  # 0.05
    assert not dw.relation_holds("in front of", large_red_cube, blue_sphere)  # same depth
    with pytest.raises(ValueError, match="unknown relation"):
        dw.relation_holds("on top of", small_red_cube, blue_sphere)

    scene = dw.Scene([small_red_cube, blue_sphere, large_red_cube], [0] + [-1] * 35)

    def graph(entities, relations=()):
        return SceneGraph(
            "", [Entity(n, a) for n, a in entities], [Relation(*r) for r in relations]
        )

    red_cube, sphere = ("cube", ["red"]), ("sphere", [])
    assert dw.graph_is_true(scene, graph([red_cube, sphere], [(0, "to the left of", 1)]))
    # Ambiguous "a red cube" is true through the large one.
    assert dw.graph_is_true(scene, graph([red_cube, sphere], [(0, "above", 1)]))
    assert not dw.graph_is_true(
        scene, graph([("cube", ["small", "red"]), sphere], [(0, "above", 1)])
    )
    assert not dw.graph_is_true(scene, graph([("cube", ["blue"])]))
    assert not dw.graph_is_true(scene, graph([("cube", ["shiny"])]))
    # Two entities need two distinct objects.
    assert not dw.graph_is_true(scene, graph([sphere, sphere]))
    assert dw.graph_is_true(scene, graph([red_cube, red_cube]))


def test_score_probes_hand_computed():
    probes = [
        dw.Probe(0, 0, "p", "n", "swap_attribute"),
        dw.Probe(1, 5, "p", "n", "swap_attribute"),
        dw.Probe(1, 6, "p", "n", "swap_relation"),
    ]
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    positives = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    negatives = np.array([[1.0, 5.0], [0.0, 3.0], [5.0, 2.0]])
    # Scores: 2 > 1 (win), 1 < 3 (loss), 2 == 2 (a tie is not a win).
    assert dw.score_probes(probes, images, positives, negatives) == {
        "swap_attribute": 50.0,
        "swap_relation": 0.0,
    }
    only_attribute = dw.score_probes(probes[:1], images, positives[:1], negatives[:1])
    assert only_attribute["swap_attribute"] == 100.0
    assert math.isnan(only_attribute["swap_relation"])
    with pytest.raises(ValueError, match="negative_caption_embeddings"):
        dw.score_probes(probes, images, positives, negatives[:2])
    with pytest.raises(ValueError, match=r"probes\[1\]\.image"):
        dw.score_probes(probes, images[:1], positives, negatives)


def test_readers_name_the_file_line_and_field(tmp_path):
    good = {
        "image": 0,
        "caption_index": 0,
        "positive": "a",
        "negative": "b",
        "kind": "swap_attribute",
    }
    bad = {key: value for key, value in good.items() if key != "negative"}
    (tmp_path / "test_probes.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"test_probes\.jsonl:2: missing field 'negative'"):
        dw.load_probes(tmp_path)
    scene = {
        "objects": [
            {
                "shape": "cube",
                "colour": "pink",
                "size": "small",
                "material": "metal",
                "x": 0.1,
                "y": 0.2,
                "depth": 0.3,
            }
        ],
        "rows": [0] + [-1] * 35,
    }
    (tmp_path / "dev_scenes.jsonl").write_text(json.dumps(scene) + "\n")
    with pytest.raises(ValueError, match=r"dev_scenes\.jsonl:1: objects\[0\]: field 'colour'"):
        dw.load_scenes(tmp_path, "dev")


def test_a_sample_of_captions_parses_to_the_intended_graphs(world):
    parser = pytest.importorskip("cora_keras.scene_graph.parser")
    facts = dw.load_caption_facts(world, "test")[:100]
    try:
        graphs = parser.parse_captions([f.caption for f in facts])
    except parser.SpacyModelMissing as error:
        pytest.skip(str(error))

    def same(gold, parsed):
        # The parser may keep a verb before the spatial phrase ("sits behind").
        gold_relations = {(r.subject, r.object): r.predicate for r in gold.relations}
        parsed_relations = {(r.subject, r.object): r.predicate.lower() for r in parsed.relations}
        return (
            [(e.name, sorted(e.attributes)) for e in gold.entities]
            == [(e.name, sorted(e.attributes)) for e in parsed.entities]
            and len(parsed.relations) == len(gold.relations)
            and gold_relations.keys() == parsed_relations.keys()
            and all(p in parsed_relations[k] for k, p in gold_relations.items())
        )

    matches = sum(same(f.to_scene_graph(), g) for f, g in zip(facts, graphs))
    assert matches >= 90, f"{matches} of 100 demo captions parse to their intended graphs"
