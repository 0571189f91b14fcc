"""`earl plot`: pictures of training runs."""

from __future__ import annotations

from earl.cli.common import named_paths
from earl.viz import plot_metrics


def _cmd_metrics(args) -> None:
    runs = named_paths(args.runs, "run", "RUN_DIR or LABEL=RUN_DIR (a training run's output directory)",
                       name_optional=True)
    plot_metrics(runs, args.key, args.out, smooth=args.smooth)
    print(f"wrote {args.out}")


def register(sub) -> None:
    plot = sub.add_parser("plot", help="pictures of training runs").add_subparsers(dest="what", required=True)
    pm = plot.add_parser("metrics", help="training curves from runs' metrics.jsonl (one panel per --key)")
    pm.add_argument("runs", nargs="+", help="run directories (or LABEL=DIR), e.g. runs/rrm_gcpo_bundle")
    pm.add_argument("--key", action="append", required=True,
                    help="a logged metric, e.g. gcpo/pair_correct or eval/pairwise_accuracy (repeatable)")
    pm.add_argument("--smooth", type=int, default=1, help="moving average over this many logged steps")
    pm.add_argument("--out", required=True, help="the PNG to write")
    pm.set_defaults(func=_cmd_metrics)
