"""`earl demo`: the quickstart job, end to end on a CPU."""

from __future__ import annotations

from pathlib import Path


def _cmd_demo(args) -> None:
    # lazy: the demo trains and samples, so it loads torch and transformers
    from earl.demo import run_demo

    run_demo(Path(args.out), fast=args.fast)


def register(sub) -> None:
    demo = sub.add_parser("demo", help="the quickstart job: data -> tokenizer -> report")
    demo.add_argument("--out", default="runs/demo", help="working directory for the demo's outputs")
    demo.add_argument("--fast", action="store_true", help="a smaller run (smoke test)")
    demo.set_defaults(func=_cmd_demo)
