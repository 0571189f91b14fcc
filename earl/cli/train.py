"""`earl train STAGE RECIPE [key=value ...]`: one subcommand per training stage of `earl.train.stages`,
each a recipe dataclass loaded from YAML and the stage's train function."""

from __future__ import annotations

import json

from earl.config import load_config
from earl.train.stages import STAGES


def _cmd_train(args) -> None:
    stage = STAGES[args.stage]  # the trainer module is imported here: it loads torch, transformers, often trl
    report = stage.train_function()(load_config(stage.recipe_class(), args.recipe, args.overrides),
                                    resume=args.resume)
    fmt = stage.report_function()
    print(fmt(report) if fmt else json.dumps(report, indent=2))


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model from a YAML recipe").add_subparsers(dest="what", required=True)
    for name, stage in STAGES.items():
        t = train.add_parser(name, help=f"train with {stage.module}")
        t.add_argument("recipe", help=f"YAML recipe, e.g. recipes/shapes/{name}.yaml")
        t.add_argument("overrides", nargs="*", help="key.sub=value overrides of recipe fields")
        t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
        t.set_defaults(func=_cmd_train, stage=name)
