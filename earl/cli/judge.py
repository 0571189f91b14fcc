"""`earl judge`: judge a folder of edited images."""

from __future__ import annotations

from earl.io import atomic_write_json


def _cmd_shapes(args) -> None:
    # lazy: the ShapesEdit oracle reads its dataset with datasets and pyarrow
    from earl.shapes.judge import format_table, judge_folder

    results = judge_folder(args.data, args.images)
    atomic_write_json(args.out, results)
    print(format_table(results))
    print(f"results written to {args.out}")


def register(sub) -> None:
    judge = sub.add_parser("judge", help="judge edited images").add_subparsers(dest="what", required=True)
    j = judge.add_parser("shapes", help="judge a folder of edited PNGs (one per sample id) with the ShapesEdit oracle")
    j.add_argument("--data", required=True, help="ShapesEdit dataset directory")
    j.add_argument("--images", required=True, help="directory of edited images named {id}.png")
    j.add_argument("--out", required=True, help="results.json to write")
    j.set_defaults(func=_cmd_shapes)
