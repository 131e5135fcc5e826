"""Where a trained run loses relation direction on the demo world.

Usage (from the repository root):
    python -m benchmarks.relation_readout --run RUN --world DIR [--images 1000] [--fit-images 600]

The swap-relation probe needs the image embedding to say which object
stands where relative to which. This script reads, from the run's own
features and the world's true layouts (`{split}_scenes.jsonl`, the
captions' facts), how much of that survives each stage:

  1. position: a ridge regression from an object's mean encoded region
     (the image tower's rows before GPO) to its x, y and depth, fitted on
     the first `--fit-images` images, R^2 on the others (raw region rows
     beside it);
  2. identity: how often an object's mean encoded row scores its own
     entity embedding (gold scene graph of the caption) above the other
     entities of the same caption;
  3. direction: for the held-out images' "left of", "right of", "above"
     and "below" relations, whether the read-out positions order subject
     and object as the predicate says, taking each entity's position from
     the object's true rows, or from every row weighted by a softmax of
     row . entity / tau (what a model must do without the layout).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

AXES = {"to the left of": (0, 1), "to the right of": (0, -1), "above": (1, -1), "below": (1, 1)}
TAUS = (0.05, 0.2, 1.0)
BATCH = 100


def encoded_regions(model, regions: np.ndarray) -> np.ndarray:
    """(n, N, D) rows of the image tower before GPO (every row valid)."""
    out = []
    for start in range(0, len(regions), BATCH):
        chunk = np.asarray(regions[start : start + BATCH])
        counts = np.full(len(chunk), chunk.shape[1], np.int32)
        out.append(np.asarray(model.region_encoder.encode_regions(chunk, counts)))
    return np.concatenate(out)


def entity_embeddings(model, config, vocabulary, facts) -> np.ndarray:
    """(captions, E, D) normalised entity embeddings of the captions' gold graphs."""
    from cora_keras.export import graphs_to_tensors

    tensors = graphs_to_tensors([f.to_scene_graph() for f in facts], vocabulary, config.model)
    out = []
    for start in range(0, len(facts), 4 * BATCH):
        part = {name: value[start : start + 4 * BATCH] for name, value in tensors.items()}
        out.append(np.asarray(model.encode_captions(part)["entities"]))
    return np.concatenate(out)


def object_rows(scene, k: int) -> list[int]:
    return [r for r, owner in enumerate(scene.rows) if owner == k]


class PositionReadout:
    """Ridge regression (alpha 10, standardised inputs) from object-mean rows to x, y, depth."""

    def __init__(self, rows: np.ndarray, scenes, fit: int) -> None:
        inputs, targets, image = [], [], []
        for s, scene in enumerate(scenes):
            for k, obj in enumerate(scene.objects):
                inputs.append(rows[s, object_rows(scene, k)].mean(0))
                targets.append((obj.x, obj.y, obj.depth))
                image.append(s)
        x, y, image = np.asarray(inputs, np.float64), np.asarray(targets), np.asarray(image)
        train = image < fit
        self.mean, self.scale = x[train].mean(0), x[train].std(0) + 1e-6
        a = self._design(x[train])
        self.weights = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ y[train])
        held = y[~train]
        residual = ((self(x[~train]) - held) ** 2).sum(0)
        self.r2 = 1.0 - residual / ((held - held.mean(0)) ** 2).sum(0)

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.c_[(x - self.mean) / self.scale, np.ones(len(x))]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._design(np.asarray(x, np.float64)) @ self.weights


def identity_share(rows, entities, scenes, facts, fit: int) -> tuple[float, int]:
    """Share of (caption, entity) pairs of held-out images whose object's mean
    row scores its own entity highest among the caption's entities."""
    hits = total = 0
    for c, f in enumerate(facts):
        if f.image < fit or len(f.objects) < 2:
            continue
        means = [rows[f.image, object_rows(scenes[f.image], k)].mean(0) for k in f.objects]
        for j, mean in enumerate(means):
            hits += int(np.argmax([mean @ entities[c, m] for m in range(len(means))]) == j)
            total += 1
    return hits / max(total, 1), total


def direction_share(rows, entities, scenes, facts, positions, fit: int, tau: float | None) -> tuple[float, int]:
    """Share of held-out axis relations whose read-out positions (n, N, 3)
    order subject and object as the predicate says; tau None takes the
    object's true rows."""
    right = total = 0
    for c, f in enumerate(facts):
        if f.image < fit:
            continue
        image_rows, image_positions = rows[f.image], positions[f.image]
        for relation in f.relations:
            if relation.predicate not in AXES:
                continue
            axis, sign = AXES[relation.predicate]
            ends = []
            for e in (relation.subject, relation.object):
                if tau is None:
                    ends.append(image_positions[object_rows(scenes[f.image], f.objects[e]), axis].mean())
                else:
                    logits = image_rows @ entities[c, e] / tau
                    weights = np.exp(logits - logits.max())
                    ends.append(weights @ image_positions[:, axis] / weights.sum())
            right += int(sign * (ends[1] - ends[0]) > 0)
            total += 1
    return right / max(total, 1), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory trained on the demo world")
    parser.add_argument("--world", required=True, help="the demo world directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=1000, help="images of the split to use")
    parser.add_argument("--fit-images", type=int, default=600, help="images the position read-out is fitted on")
    args = parser.parse_args()
    if not 0 < args.fit_images < args.images:
        parser.error("--fit-images must be between 0 and --images")

    from cora_keras.data.demo_world import load_caption_facts, load_scenes
    from cora_keras.run import load_run

    config, model, vocabulary = load_run(args.run)
    raw = np.load(os.path.join(args.world, f"{args.split}_ims.npy"), mmap_mode="r")[: args.images]
    scenes = load_scenes(args.world, args.split)[: args.images]
    facts = [f for f in load_caption_facts(args.world, args.split) if f.image < args.images]
    rows = encoded_regions(model, raw)
    entities = entity_embeddings(model, config, vocabulary, facts)

    print(f"{args.run} on {args.split} images {args.fit_images}..{args.images - 1} (read-out fitted on the rest)")
    for name, source in (("raw region rows", np.asarray(raw)), ("encoded regions", rows)):
        r2 = PositionReadout(source, scenes, args.fit_images).r2
        print(f"position R^2 from {name:<16} x {r2[0]:.3f}  y {r2[1]:.3f}  depth {r2[2]:.3f}")
    positions = PositionReadout(rows, scenes, args.fit_images)(rows.reshape(-1, rows.shape[-1])).reshape(*rows.shape[:2], 3)
    share, count = identity_share(rows, entities, scenes, facts, args.fit_images)
    print(f"identity: an object's mean row scores its own entity highest in {100 * share:.1f}% of {count}")
    for tau in (None, *TAUS):
        share, count = direction_share(rows, entities, scenes, facts, positions, args.fit_images, tau)
        source = "the objects' true rows" if tau is None else f"rows weighted by softmax(row . entity / {tau})"
        print(f"direction from {source:<45} {100 * share:.1f}% of {count} relations")


if __name__ == "__main__":
    main()
