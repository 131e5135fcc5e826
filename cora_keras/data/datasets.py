"""A dataset split on disk: captions, their scene graphs, region features.

Layout (DATA.md section 2): `{split}_caps.txt` (caption i describes image
i // 5), region features (see `features.py`), `scene_graphs/{split}.jsonl`
(one graph per caption line, parsed on first use and cached beside a
`{split}.sha256` of the captions file, reparsed when the captions change)
and `vocab.json` (built from the train split's graphs when missing).
`load_split` checks that the parts agree and names the files when not.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cora_keras.config import Config
from cora_keras.data.features import RegionFeatures, check_finite, open_features
from cora_keras.scene_graph.parser import parse_captions
from cora_keras.scene_graph.schema import SceneGraph, read_jsonl, write_jsonl
from cora_keras.scene_graph.vocabulary import Vocabulary

CAPTIONS_PER_IMAGE = 5
TRAIN_SPLIT = "train"


class DatasetError(ValueError):
    """The files of a split are missing or disagree with each other."""


@dataclass(frozen=True)
class Split:
    """One split: caption i (with graph i) describes image i // 5.

    Attributes:
        name: the split name (`train`, `dev`, `test`, `testall`, ...).
        data_dir: the dataset directory.
        captions: the caption lines, in file order.
        graphs: one scene graph per caption, in the same order.
        features: the region features of the images.
        vocabulary: the dataset's vocabulary (built from the train split).
    """

    name: str
    data_dir: Path
    captions: list[str]
    graphs: list[SceneGraph]
    features: RegionFeatures
    vocabulary: Vocabulary

    @property
    def num_images(self) -> int:
        return len(self.features)

    @property
    def num_captions(self) -> int:
        return len(self.captions)


def load_split(
    data_dir: str | os.PathLike,
    split: str,
    config: Config,
    *,
    parse_processes: int | None = None,
    scan_features: bool = False,
    vocabulary: Vocabulary | None = None,
) -> Split:
    """Open `split` of the dataset in `data_dir`, parsing and caching as needed.

    Args:
        data_dir: the dataset directory.
        split: the split name; files are `{split}_caps.txt` etc.
        config: the run's config (feature layout and shapes, vocab min count).
        parse_processes: processes for the scene graph parser on a cache
            miss; default `data.parse_processes`.
        scan_features: also scan every image's features for NaN/Inf now
            (otherwise each image is checked when first read).
        vocabulary: the vocabulary to use (a trained run's or a release
            checkpoint's) instead of the dataset's `vocab.json`.
    """
    data_dir = Path(data_dir)
    captions_path = captions_file(data_dir, split)
    captions = read_captions(captions_path)
    features = open_features(
        data_dir,
        split,
        config.data.features,
        (config.model.num_regions, config.model.region_feature_size),
    )
    if len(captions) != CAPTIONS_PER_IMAGE * len(features):
        raise DatasetError(
            f"{captions_path} holds {len(captions)} captions but {features.location} "
            f"holds {len(features)} images; expected {CAPTIONS_PER_IMAGE} captions "
            f"per image ({CAPTIONS_PER_IMAGE * len(features)})"
        )
    if scan_features:
        check_finite(features)
    if parse_processes is None:
        parse_processes = config.data.parse_processes
        if parse_processes < 1:
            raise ValueError(f"data.parse_processes = {parse_processes}: must be >= 1")
    graphs = load_scene_graphs(data_dir, split, captions, parse_processes)
    if vocabulary is None:
        train_graphs = graphs if split == TRAIN_SPLIT else None
        vocabulary = load_vocabulary(data_dir, config, parse_processes, train_graphs)
    return Split(split, data_dir, captions, graphs, features, vocabulary)


def captions_file(data_dir: str | os.PathLike, split: str) -> Path:
    """`{data_dir}/{split}_caps.txt`."""
    return Path(data_dir) / f"{split}_caps.txt"


def read_captions(path: str | os.PathLike) -> list[str]:
    """Caption lines without their line ends; an empty line is an error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: captions file not found")
    with open(path, encoding="utf-8") as f:
        captions = f.read().splitlines()
    for line_number, caption in enumerate(captions, start=1):
        if not caption.strip():
            raise DatasetError(f"{path}:{line_number}: empty caption")
    return captions


def load_scene_graphs(
    data_dir: str | os.PathLike,
    split: str,
    captions: list[str],
    parse_processes: int = 1,
) -> list[SceneGraph]:
    """The graphs of `split`'s captions, from the cache
    `scene_graphs/{split}.jsonl` or parsed and cached (see `cached_scene_graphs`)."""
    graphs_path = Path(data_dir) / "scene_graphs" / f"{split}.jsonl"
    return cached_scene_graphs(captions_file(data_dir, split), graphs_path, captions, parse_processes)


def cached_scene_graphs(
    source_path: str | os.PathLike,
    graphs_path: str | os.PathLike,
    captions: list[str],
    parse_processes: int = 1,
) -> list[SceneGraph]:
    """The graphs of `captions` (read from `source_path`), cached in `graphs_path`.

    The cache is used when its `.sha256` file matches the source file,
    reparsed when it does not; without a `.sha256` file (graphs provided by
    the user) it is used as is if it holds exactly the captions given.
    """
    source_path, graphs_path = Path(source_path), Path(graphs_path)
    hash_path = graphs_path.with_suffix(".sha256")
    digest = file_sha256(source_path)
    if graphs_path.is_file() and not hash_path.is_file():
        graphs = read_jsonl(graphs_path)
        _check_in_step(graphs, graphs_path, captions, source_path)
        return graphs
    stored = hash_path.read_text(encoding="utf-8") if hash_path.is_file() else ""
    if graphs_path.is_file() and stored.split()[:1] == [digest]:
        graphs = read_jsonl(graphs_path)
        if len(graphs) != len(captions):
            raise DatasetError(
                f"{graphs_path} holds {len(graphs)} graphs but {source_path} holds "
                f"{len(captions)} captions; delete {hash_path} to reparse"
            )
        return graphs
    graphs = parse_captions(captions, processes=parse_processes)
    graphs_path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(graphs, graphs_path)
    _write_atomically(hash_path, f"{digest}  {source_path.name}\n")
    return graphs


def load_vocabulary(
    data_dir: str | os.PathLike,
    config: Config,
    parse_processes: int = 1,
    train_graphs: list[SceneGraph] | None = None,
) -> Vocabulary:
    """`vocab.json`, built from the train split's graphs when missing.

    Args:
        train_graphs: the train split's graphs when the caller has them
            already; otherwise they are loaded (or parsed) as needed.
    """
    path = Path(data_dir) / "vocab.json"
    if path.is_file():
        return Vocabulary.load(path)
    if train_graphs is None:
        train_captions_path = captions_file(data_dir, TRAIN_SPLIT)
        if not train_captions_path.is_file():
            raise DatasetError(
                f"{path}: vocabulary not found, and {train_captions_path} to build "
                "it from is missing"
            )
        train_captions = read_captions(train_captions_path)
        train_graphs = load_scene_graphs(
            data_dir, TRAIN_SPLIT, train_captions, parse_processes
        )
    vocabulary = Vocabulary.build(train_graphs, config.data.vocab_min_count)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    vocabulary.save(tmp)
    os.replace(tmp, path)
    return vocabulary


def _check_in_step(
    graphs: list[SceneGraph],
    graphs_path: Path,
    captions: list[str],
    captions_path: Path,
) -> None:
    """Graph i must be the graph of caption i (whitespace aside)."""
    for index, (graph, caption) in enumerate(zip(graphs, captions)):
        if graph.caption.split() != caption.split():
            raise DatasetError(
                f"{graphs_path}: graphs out of step with captions at line "
                f"{index + 1}: graph of {graph.caption!r}, but {captions_path}:"
                f"{index + 1} is {caption!r}"
            )
    if len(graphs) != len(captions):
        line = min(len(graphs), len(captions)) + 1
        raise DatasetError(
            f"{graphs_path}: graphs out of step with captions at line {line}: "
            f"{len(graphs)} graphs for the {len(captions)} captions of {captions_path}"
        )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
