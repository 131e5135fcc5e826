"""The `cora-keras` command.

One subcommand per task. Each is declared here by a `_<name>_command`
function that adds its subparser and sets `handler`; the handler imports the
module that owns the task lazily (so `cora-keras parse` loads no deep
learning framework) and calls that module's public function. To add a
subcommand (`train`, `evaluate`, `export`, `search`, `demo`), write its
`_<name>_command` and append it to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from cora_keras.config import DISTRIBUTIONS


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parse_command(subparsers: argparse._SubParsersAction) -> None:
    """`parse`: captions file -> scene graphs JSONL (cora_keras.scene_graph.parser)."""
    command = subparsers.add_parser(
        "parse",
        help="parse captions into scene graphs",
        description="Parse a captions file (one caption per line) into a JSON Lines "
        "file of scene graphs, one per line in the same order.",
    )
    command.add_argument("captions", help="text file with one caption per line")
    command.add_argument("-o", "--output", required=True, help="JSON Lines file to write")
    command.add_argument("--processes", type=_positive_int, default=1, help="worker processes (default 1)")
    command.add_argument("--batch-size", type=_positive_int, default=256, help="captions per spaCy batch (default 256)")
    command.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    command.set_defaults(handler=_run_parse)


def _run_parse(args: argparse.Namespace) -> int:
    from cora_keras.scene_graph.parser import parse_file

    count = parse_file(
        args.captions,
        args.output,
        processes=args.processes,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(f"wrote {count} scene graphs to {args.output}", file=sys.stderr)
    return 0


def _train_command(subparsers: argparse._SubParsersAction) -> None:
    """`train`: model.fit on a dataset into a run directory (cora_keras.training)."""
    command = subparsers.add_parser(
        "train",
        help="train CORA on a dataset",
        description="Train CORA on DIR's train split, evaluating on its dev split every "
        "epoch; writes config, vocabulary, best/last weights, history and TensorBoard "
        "logs to the run directory.",
    )
    command.add_argument("--config", help="YAML config (with --resume: default the run's)")
    command.add_argument("--data", required=True, help="dataset directory")
    command.add_argument("--out", required=True, help="run directory (new or empty, or with --resume)")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. train.batch_size=64 (repeatable)")
    command.add_argument("--epochs", type=_positive_int, help="train.epochs")
    command.add_argument("--steps-per-epoch", type=_positive_int, help="train.steps_per_epoch (short runs)")
    command.add_argument("--resume", action="store_true", help="continue the run in --out from its backup")
    command.add_argument(
        "--distribution", choices=DISTRIBUTIONS,
        help="train.distribution: data-parallel engine (data_parallel: JAX; mirrored, "
        "multi_worker_mirrored: TensorFlow); train.batch_size stays the global batch",
    )
    command.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from cora_keras.training import run_config, train

    config = run_config(
        args.config, args.out, args.set, args.epochs, args.steps_per_epoch, args.resume, args.distribution
    )
    history = train(config, args.data, args.out, resume=args.resume)
    rsum = history.history.get("val_rsum", [])
    if rsum:
        print(f"best dev RSUM of this call: {max(rsum):.1f}; run in {args.out}", file=sys.stderr)
    return 0


def _evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    """`evaluate`: the paper's table row of a run or release checkpoint (cora_keras.evaluation)."""
    command = subparsers.add_parser(
        "evaluate",
        help="retrieval R@K and RSUM on a split",
        description="Print R@1 R@5 R@10 image->text, text->image and RSUM for the "
        "dataset's protocol (Flickr30K 1K; MS-COCO 1K 5-fold and 5K; else the whole split).",
    )
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="training run directory (best weights, else last)")
    source.add_argument("--checkpoint", help="the authors' PyTorch checkpoint (.pth)")
    command.add_argument("--config", help="YAML config of the checkpoint's model")
    command.add_argument("--vocab", help="the checkpoint's release vocab.json")
    command.add_argument("--data", required=True, help="dataset directory")
    command.add_argument("--split", default="test", help="split name (default test)")
    command.add_argument("--save-embeddings", metavar="F.npz", help="write images (n, D) and captions (5n, D)")
    command.add_argument("--batch-size", type=_positive_int, help="default train.eval_batch_size")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    command.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from cora_keras.evaluation import evaluate

    print(
        evaluate(
            args.data,
            args.split,
            run_dir=args.run,
            checkpoint=args.checkpoint,
            config_path=args.config,
            vocab_path=args.vocab,
            overrides=args.set,
            save_embeddings=args.save_embeddings,
            batch_size=args.batch_size,
        )
    )
    return 0


def _export_command(subparsers: argparse._SubParsersAction) -> None:
    """`export`: a run's two towers as a TensorFlow SavedModel (cora_keras.export)."""
    command = subparsers.add_parser(
        "export",
        help="export a run's towers as a TensorFlow SavedModel",
        description="Write a SavedModel with endpoints encode_image and encode_text "
        "(loadable with plain TensorFlow) and the run's config and vocabulary in "
        "assets.extra/. Runs on the TensorFlow backend whatever KERAS_BACKEND says.",
    )
    command.add_argument("--run", required=True, help="training run directory (best weights, else last)")
    command.add_argument("--out", required=True, help="SavedModel directory to write")
    command.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from cora_keras.export import export_run

    out = export_run(args.run, args.out)
    print(f"wrote SavedModel (encode_image, encode_text) to {out}", file=sys.stderr)
    return 0


def _search_command(subparsers: argparse._SubParsersAction) -> None:
    """`search`: text -> images, image -> captions and entity phrases (cora_keras.search)."""
    command = subparsers.add_parser(
        "search",
        help="search a split with a text or an image",
        description="Rank a split's images for a text, or its captions and entity "
        "phrases for one of its images. Embeddings are cached in RUN/cache/SPLIT.npz.",
    )
    command.add_argument("--run", required=True, help="training run directory (best weights, else last)")
    command.add_argument("--data", required=True, help="dataset directory")
    command.add_argument("--split", default="test", help="split name (default test)")
    query = command.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption: rank the split's images")
    query.add_argument("--image", type=int, help="an image index of the split: rank captions and entity phrases")
    command.add_argument("--top", type=_positive_int, default=5, help="results per list (default 5)")
    command.set_defaults(handler=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from cora_keras.search import search

    print(search(args.run, args.data, args.split, text=args.text, image=args.image, top=args.top))
    return 0


def _demo_command(subparsers: argparse._SubParsersAction) -> None:
    """`demo`: CORA and a bag-of-words ablation on the generated demo world (cora_keras.demo)."""
    command = subparsers.add_parser(
        "demo",
        help="train and evaluate CORA and a bag-of-words ablation on the demo world",
        description="Generate the demo world, train configs/demo.yaml and its bag-of-words "
        "ablation, evaluate both on the test split and the swap probes, export CORA as a "
        "SavedModel and write OUT/results.json. Runs on JAX unless KERAS_BACKEND is set.",
    )
    command.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for both models (repeatable)")
    command.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from cora_keras.demo import DemoSettings, format_results, run_demo

    print(format_results(run_demo(args.out, DemoSettings(overrides=tuple(args.set)))))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _parse_command,
    _train_command,
    _evaluate_command,
    _export_command,
    _search_command,
    _demo_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `cora-keras` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="cora-keras",
        description="CORA scene-graph dual encoder for image-text retrieval, in Keras 3.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `cora-keras` with `argv` (default: the process arguments); returns the exit status.

    Bad input (a missing file, a malformed line) ends with a one-line
    message on stderr and status 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (OSError, ValueError) as error:
        print(f"cora-keras {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
