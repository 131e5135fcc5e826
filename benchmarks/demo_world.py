"""Time to generate the demo world, its size on disk, and how hard its rows are.

Usage (from the repository root):
    python -m benchmarks.demo_world [FEATURE_SIZE ...]

For each feature size (default: 256, the default, and 2048), generates the
default world (train 6,000, dev 500, test 1,000 scenes) into a temporary
directory and prints the wall and CPU time, the bytes written, and the
held-out accuracy of a least-squares linear probe from single-object rows
to each attribute (chance: shape and colour 12.5%, size 50%, material 33%).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from cora_keras.data import demo_world as dw

PROBE_SCENES = 1500


def linear_probe_accuracies(root: str) -> dict[str, float]:
    """Held-out accuracy (by scene) of a linear least-squares read-out per attribute."""
    scenes = dw.load_scenes(root, "train")[:PROBE_SCENES]
    ims = np.load(os.path.join(root, "train_ims.npy"), mmap_mode="r")
    rows, labels, owner = [], [], []
    for i, scene in enumerate(scenes):
        for r, k in enumerate(scene.rows):
            if k >= 0:
                obj = scene.objects[k]
                rows.append(ims[i, r])
                labels.append(
                    (
                        dw.SHAPES.index(obj.shape),
                        dw.COLOURS.index(obj.colour),
                        dw.SIZES.index(obj.size),
                        dw.MATERIALS.index(obj.material),
                    )
                )
                owner.append(i)
    x = np.c_[np.asarray(rows, dtype=np.float64), np.ones(len(rows))]
    y = np.asarray(labels)
    cut = int(np.searchsorted(owner, len(scenes) * 2 // 3))
    accuracies = {}
    for a, (name, values) in enumerate(
        (
            ("shape", dw.SHAPES),
            ("colour", dw.COLOURS),
            ("size", dw.SIZES),
            ("material", dw.MATERIALS),
        )
    ):
        targets = np.eye(len(values))[y[:cut, a]]
        weights = np.linalg.lstsq(x[:cut], targets, rcond=None)[0]
        accuracies[name] = float(np.mean(np.argmax(x[cut:] @ weights, axis=1) == y[cut:, a]))
    return accuracies


def main(feature_sizes: list[int]) -> None:
    for feature_size in feature_sizes:
        with tempfile.TemporaryDirectory() as root:
            wall, cpu = time.perf_counter(), time.process_time()
            dw.generate_demo_world(root, feature_size=feature_size, progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            size = sum(os.path.getsize(os.path.join(root, name)) for name in os.listdir(root))
            probes = dw.load_probes(root)
            kinds = {kind: sum(p.kind == kind for p in probes) for kind in dw.PROBE_KINDS}
            linear = linear_probe_accuracies(root)
        print(
            f"F={feature_size}: generated in {wall:.1f} s wall, {cpu:.1f} s CPU; "
            f"{size / 1e6:.0f} MB on disk; probes {kinds}; linear probe accuracy "
            + ", ".join(f"{name} {100 * acc:.0f}%" for name, acc in linear.items())
        )


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [dw.DEFAULT_FEATURE_SIZE, 2048])
