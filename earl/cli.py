"""The `earl` command: one subcommand per job, each a thin wrapper over a library function.

User errors (`EarlError`) print one line and exit with status 2; anything else is a bug and
keeps its traceback. Heavy imports happen inside each handler so `earl --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from earl.errors import EarlError


def _cmd_data_shapes(args) -> None:
    from earl.shapes.dataset import write_dataset

    out = write_dataset(args.out, split=args.split, n=args.n, seed=args.seed, part=args.part, image_size=args.size)
    print(f"wrote {args.n} {args.split}/{args.part} samples to {out}")


def _cmd_judge_shapes(args) -> None:
    from earl.io import atomic_write_json
    from earl.shapes.judge import format_table, judge_folder

    results = judge_folder(args.data, args.images)
    atomic_write_json(args.out, results)
    print(format_table(results))
    print(f"results written to {args.out}")


def _cmd_train_tokenizer(args) -> None:
    from earl.config import load_config
    from earl.train.tokenizer import TokenizerRecipe, format_report, train_tokenizer

    cfg = load_config(TokenizerRecipe, args.recipe, args.overrides)
    report = train_tokenizer(cfg, resume=args.resume)
    print(format_report(report))


def _cmd_demo(args) -> None:
    from earl.demo import run_demo

    run_demo(Path(args.out), fast=args.fast)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or prepare datasets").add_subparsers(dest="what", required=True)
    d = data.add_parser("shapes", help="write a ShapesEdit dataset (parquet, readable by datasets.load_dataset)")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--n", type=int, required=True, help="number of samples")
    d.add_argument("--split", choices=["simple", "complex"], default="simple")
    d.add_argument("--part", choices=["train", "test"], default="train",
                   help="test = the fixed test set of the split (its seed is reserved; --seed is ignored)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 4 × 8)")
    d.set_defaults(func=_cmd_data_shapes)

    judge = sub.add_parser("judge", help="judge edited images").add_subparsers(dest="what", required=True)
    j = judge.add_parser("shapes", help="judge a folder of edited PNGs (one per sample id) with the ShapesEdit oracle")
    j.add_argument("--data", required=True, help="ShapesEdit dataset directory")
    j.add_argument("--images", required=True, help="directory of edited images named {id}.png")
    j.add_argument("--out", required=True, help="results.json to write")
    j.set_defaults(func=_cmd_judge_shapes)

    train = sub.add_parser("train", help="train a model from a YAML recipe").add_subparsers(dest="what", required=True)
    t = train.add_parser("tokenizer", help="train the VQ image tokenizer")
    t.add_argument("recipe", help="YAML recipe, e.g. recipes/shapes/tokenizer.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides of recipe fields")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
    t.set_defaults(func=_cmd_train_tokenizer)

    demo = sub.add_parser("demo", help="the quickstart job: data -> tokenizer -> report")
    demo.add_argument("--out", default="runs/demo", help="working directory for the demo's outputs")
    demo.add_argument("--fast", action="store_true", help="a smaller run (smoke test)")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EarlError as e:
        print(f"earl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("earl: interrupted (outputs written so far are complete; re-run to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
