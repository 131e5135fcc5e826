"""The `cora-keras demo` job: CORA and a bag-of-words ablation on the demo world.

Stages, each printed with the elapsed time:
  1. generate the demo world (`data.demo_world`) in `OUT/world` (kept when
     it is already there with the same parameters);
  2. train `configs/demo.yaml` into `OUT/cora`, evaluate its best weights
     on the test split, score the swap probes;
  3. the same for the bag-of-words ablation (`model.text_encoder=bow`: the
     caption is the mean of its word embeddings, same image tower and
     objective) in `OUT/bow`;
  4. export CORA's towers as a SavedModel in `OUT/export` (in a TensorFlow
     subprocess when this process runs another backend);
  5. write `OUT/results.json` and print the table.

Keras is imported lazily: `choose_backend` picks JAX (the fastest trainer
on CPU here) unless KERAS_BACKEND says otherwise or Keras is already loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from cora_keras.config import Config
    from cora_keras.model import CoraModel
    from cora_keras.scene_graph.vocabulary import Vocabulary

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
BOW_OVERRIDES = ("model.text_encoder=bow",)
RESULTS_FILE = "results.json"
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
FAST_BACKEND = "jax"


def choose_backend() -> str:
    """Select JAX when neither KERAS_BACKEND nor an imported Keras decides; return the backend."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", FAST_BACKEND)
    import keras

    return keras.backend.backend()


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs on; the defaults are the demo job's.

    Attributes:
        config_path: the CORA config (the ablation adds `BOW_OVERRIDES`).
        overrides: `KEY=VALUE` config overrides for both models.
        train_scenes, dev_scenes, test_scenes: demo world split sizes.
        feature_size: F of the world's region features.
        seed: the world's seed.
        export: whether to export CORA's SavedModel.
        verbose: `model.fit` verbosity.
    """

    config_path: str | os.PathLike = DEMO_CONFIG
    overrides: Sequence[str] = field(default_factory=tuple)
    train_scenes: int = 6000
    dev_scenes: int = 500
    test_scenes: int = 1000
    feature_size: int = 256
    seed: int = 0
    export: bool = True
    verbose: int | str = 2


class _Clock:
    """Prints stage names with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stage(self, name: str) -> None:
        print(f"[demo {self.elapsed():7.1f} s] {name}", file=sys.stderr, flush=True)


def evaluate_model(run_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict:
    """`{"test": metrics, "probes": {kind: percent}}` of a run's best weights on
    the demo world's test split and its swap probes (their negatives parsed
    once per world, see `load_probe_negative_graphs`)."""
    from cora_keras.data.demo_world import load_probe_negative_graphs, load_probes, score_probes
    from cora_keras.evaluation import SplitEmbedder, evaluate_split
    from cora_keras.export import graphs_to_tensors
    from cora_keras.run import load_run

    config, model, vocabulary = load_run(run_dir)
    embedder = SplitEmbedder(model, config)
    embeddings, results = evaluate_split(model, config, vocabulary, data_dir, "test", embedder=embedder)
    metrics = next(iter(results.values())).as_dict()
    probes = load_probes(data_dir)
    negative_graphs = load_probe_negative_graphs(data_dir, config.data.parse_processes)
    positives = embeddings.captions[[p.caption_index for p in probes]]
    negatives = embedder.embed_caption_tensors(graphs_to_tensors(negative_graphs, vocabulary, config.model))
    return {
        "test": {key: round(float(metrics[key]), 2) for key in METRIC_KEYS},
        "probes": {
            kind: round(value, 2)
            for kind, value in score_probes(probes, embeddings.images, positives, negatives).items()
        },
    }


def export_in_tensorflow(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """`cora-keras export` of the run: in this process on TensorFlow, else in a
    TensorFlow subprocess (a SavedModel needs that backend)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        from cora_keras.export import export_run

        export_run(run_dir, out_dir)
        return
    command = [sys.executable, "-m", "cora_keras", "export", "--run", os.fspath(run_dir), "--out", os.fspath(out_dir)]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export of {run_dir} failed:\n{done.stderr.strip()}")


def format_results(results: dict) -> str:
    """The final table: one row per model, R@K, RSUM and probe accuracies."""
    header = f"{'model':<14}" + "".join(f"{key:>9}" for key in METRIC_KEYS) + f"{'swap_attr':>11}{'swap_rel':>10}"
    lines = [header]
    for name, entry in (("CORA", results), ("bag-of-words", results["baseline_bow"])):
        probes = entry["probes"]
        lines.append(
            f"{name:<14}"
            + "".join(f"{entry['test'][key]:9.1f}" for key in METRIC_KEYS)
            + f"{probes['swap_attribute']:11.1f}{probes['swap_relation']:10.1f}"
        )
    lines.append(f"demo took {results['seconds']:.0f} s")
    return "\n".join(lines)


def run_demo(out_dir: str | os.PathLike = "runs/demo", settings: DemoSettings = DemoSettings()) -> dict:
    """Run the demo job into `out_dir` (see the module doc); return what
    `results.json` holds. The run directories `OUT/cora` and `OUT/bow` must
    not exist or be empty."""
    choose_backend()
    from cora_keras.config import load_config
    from cora_keras.data.demo_world import generate_demo_world
    from cora_keras.training import train

    clock = _Clock()
    out = Path(out_dir)
    config_path = Path(settings.config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: demo config not found")
    clock.stage("generating the demo world")
    world = generate_demo_world(
        out / "world",
        seed=settings.seed,
        train_scenes=settings.train_scenes,
        dev_scenes=settings.dev_scenes,
        test_scenes=settings.test_scenes,
        feature_size=settings.feature_size,
        progress=False,
    )
    shared = [f"model.region_feature_size={settings.feature_size}", *settings.overrides]
    runs = {"cora": shared, "bow": [*shared, *BOW_OVERRIDES]}
    evaluated = {}
    for name, overrides in runs.items():
        config = load_config(config_path, overrides)
        clock.stage(f"training {name} ({config_path.name}, text_encoder={config.model.text_encoder})")
        train(config, world, out / name, verbose=settings.verbose)
        clock.stage(f"evaluating {name} on the test split and the swap probes")
        evaluated[name] = evaluate_model(out / name, world)
    if settings.export:
        clock.stage("exporting CORA's towers as a SavedModel")
        export_in_tensorflow(out / "cora", out / "export")
    results = {**evaluated["cora"], "baseline_bow": evaluated["bow"], "seconds": round(clock.elapsed(), 1)}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    clock.stage(f"wrote {out / RESULTS_FILE}")
    return results

