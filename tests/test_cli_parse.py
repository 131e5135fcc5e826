"""`cora-keras parse`: captions file -> scene graphs JSONL, errors, entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cora_keras.cli import build_parser, main
from cora_keras.scene_graph.parser import SpacyModelMissing, parse_captions
from cora_keras.scene_graph.schema import read_jsonl


@pytest.fixture(scope="module")
def spacy_available() -> None:
    try:
        parse_captions(["a dog"])  # loads the parser the command then reuses
    except SpacyModelMissing as error:
        pytest.skip(str(error))


def test_parse_writes_one_graph_per_caption_in_order(spacy_available, tmp_path, capsys):
    captions = ["Two dogs run on the grass .", "a red car", "A man rides a horse on the beach ."]
    source = tmp_path / "caps.txt"
    source.write_text("\n".join(captions) + "\n", encoding="utf-8")
    target = tmp_path / "graphs.jsonl"
    assert main(["parse", str(source), "-o", str(target), "--batch-size", "2"]) == 0
    graphs = read_jsonl(target)
    assert [g.caption for g in graphs] == captions
    assert [e.name for e in graphs[0].entities] == ["dogs", "grass"]
    assert f"wrote 3 scene graphs to {target}" in capsys.readouterr().err


def test_parse_reports_an_empty_line_with_file_and_line(tmp_path, capsys):
    source = tmp_path / "caps.txt"
    source.write_text("a dog\n\n", encoding="utf-8")
    assert main(["parse", str(source), "-o", str(tmp_path / "out.jsonl")]) == 1
    assert f"cora-keras parse: error: {source}:2: empty caption line" in capsys.readouterr().err


def test_parse_reports_a_missing_file(tmp_path, capsys):
    assert main(["parse", str(tmp_path / "none.txt"), "-o", str(tmp_path / "out.jsonl")]) == 1
    assert "none.txt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["parse", "caps.txt"],  # no -o
        ["parse", "caps.txt", "-o", "out.jsonl", "--processes", "0"],
        ["parse", "caps.txt", "-o", "out.jsonl", "--batch-size", "x"],
        [],  # no subcommand
    ],
)
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: cora-keras" in capsys.readouterr().err


def test_python_dash_m_cora_keras_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "cora_keras", "parse", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--processes" in result.stdout and "--batch-size" in result.stdout
