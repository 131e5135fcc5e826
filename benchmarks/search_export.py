"""Time `cora-keras search` and `cora-keras export` on the demo world's test split.

A run with the demo config (configs/demo.yaml) and random weights is written
next to a generated demo world (1,000 test scenes = 1,000 images and 5,000
captions by default). Prints the time of: building the search index (cache
miss: hashing the files, embedding images, captions and entity phrases),
reading it back (cache hit), the cache key alone, an image query and a text
query; then, on the TensorFlow backend, the export, loading the SavedModel
with plain TensorFlow, and its throughput against the Keras towers, with the
largest difference of their embeddings.

    KERAS_BACKEND=tensorflow python -m benchmarks.search_export [--scenes 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from cora_keras.config import load_config, save_config
from cora_keras.data.datasets import load_split
from cora_keras.data.demo_world import generate_demo_world
from cora_keras.data.pipeline import CaptionBatches, ImageBatches
from cora_keras.export import export_run
from cora_keras.model import CoraModel
from cora_keras.run import BEST_WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.parser import SceneGraphParser
from cora_keras.scene_graph.vocabulary import Vocabulary
from cora_keras.search import SplitSearch, cache_key

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
BATCH = 256


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def write_run(run_dir: Path, data_dir: Path) -> None:
    """A demo-config run with random weights and the demo world's vocabulary."""
    vocabulary = Vocabulary.load(data_dir / "vocab.json")
    config = load_config(DEMO_CONFIG, [f"model.vocab_size={len(vocabulary)}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_FILE)
    vocabulary.save(run_dir / VOCAB_FILE)
    keras.utils.set_random_seed(0)
    model = CoraModel(config.model, config.loss)
    model.build()
    model.save_weights(run_dir / BEST_WEIGHTS_FILE)


def bench_search(run_dir: Path, data_dir: Path) -> SplitSearch:
    cache = run_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    session = timed(
        "search index, cache miss (hash + embed)", lambda: SplitSearch(run_dir, data_dir, "test")
    )
    index = session.index
    print(
        f"  {len(index.images)} images, {len(index.captions)} captions, "
        f"{len(index.entities)} distinct entity phrases"
    )
    warm = timed("search index, cache hit", lambda: SplitSearch(run_dir, data_dir, "test"))
    timed("cache key alone (sha256 of the files)", lambda: cache_key(run_dir, warm.split))
    timed("image query (top 5 captions + entity phrases)", lambda: warm.image_report(0, 5))
    timed("model load (first text query of a cache hit)", warm.model)
    parser = timed("spaCy parser load", SceneGraphParser)
    text = warm.split.captions[0]
    timed("text query (parse + text tower + rank)", lambda: warm.text_report(text, 5, parser))
    return warm


def bench_export(run_dir: Path, session: SplitSearch, out_dir: Path) -> None:
    import tensorflow as tf

    shutil.rmtree(out_dir, ignore_errors=True)
    timed("export_run (SavedModel write)", lambda: export_run(run_dir, out_dir))
    towers = timed("tf.saved_model.load", lambda: tf.saved_model.load(str(out_dir)))
    model, config = session.model(), session.config
    encoder = GraphEncoder(session.vocabulary, config.model, config.augment)
    images = ImageBatches(session.split, BATCH)[0]
    captions = CaptionBatches(session.split, encoder, config.model, BATCH)[0]

    def keras_images():
        return {"image": model.encode_images(images, training=False)}

    def keras_text():
        return model.encode_captions(captions, training=False)

    for name, saved, keras_fn in (
        ("image", lambda: towers.encode_image(images), keras_images),
        ("text", lambda: towers.encode_text(captions), keras_text),
    ):
        saved_out, keras_out = saved(), keras_fn()  # the first call traces
        diff = max(
            float(np.abs(np.asarray(saved_out[k], np.float32) - np.asarray(v, np.float32)).max())
            for k, v in keras_out.items()
        )
        for label, fn in (("SavedModel", saved), ("Keras eager", keras_fn)):
            start = time.perf_counter()
            for _ in range(3):
                fn()
            seconds = (time.perf_counter() - start) / 3
            print(f"encode_{name} batch {BATCH}, {label}: {BATCH / seconds:.0f} items/s")
        print(f"encode_{name}: max |SavedModel - Keras| = {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000, help="test scenes (images)")
    parser.add_argument("--work", help="working folder (default: a new temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cora_search_export_"))
    data_dir, run_dir = work / "demo", work / "run"
    timed(
        "demo world generation",
        lambda: generate_demo_world(
            data_dir, train_scenes=20, dev_scenes=1, test_scenes=args.scenes, progress=False
        ),
    )
    config = load_config(DEMO_CONFIG)
    timed(
        "scene graph parsing of the test split and vocabulary (once, then cached)",
        lambda: load_split(data_dir, "test", config),
    )
    if not (run_dir / BEST_WEIGHTS_FILE).is_file():
        timed("random demo run", lambda: write_run(run_dir, data_dir))
    print(f"backend: {keras.backend.backend()}")
    session = bench_search(run_dir, data_dir)
    if keras.backend.backend() == "tensorflow":
        bench_export(run_dir, session, work / "saved")
    else:
        print("export figures need KERAS_BACKEND=tensorflow")


if __name__ == "__main__":
    main()
