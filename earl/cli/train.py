"""`earl train STAGE RECIPE [key=value ...]`: one subcommand per training stage, each a recipe
dataclass loaded from YAML and the stage's train function."""

from __future__ import annotations

import importlib
import json

from earl.config import load_config

# stage -> (module, recipe dataclass, train function, report formatter or None)
TRAIN_STAGES = {
    "tokenizer": ("earl.train.tokenizer", "TokenizerRecipe", "train_tokenizer", "format_report"),
    "sft": ("earl.train.sft", "SFTRecipe", "train_sft", None),
    "grpo": ("earl.train.grpo", "GRPORecipe", "train_grpo", None),
    "rrm-sft": ("earl.train.rrm", "RRMRecipe", "train_rrm_sft", None),  # the reasoning reward model's cold start
    "rrm-gcpo": ("earl.train.gcpo", "GCPORecipe", "train_rrm_gcpo", None),  # ... then GCPO on preference pairs
    "rm-scalar": ("earl.train.scalar_rm", "ScalarRecipe", "train_scalar_rm", None),  # the holistic Bradley-Terry baseline
    # the ImageEdit-R1 decomposition agent, with trl: SFT on ground-truth plans, then GRPO on plan rewards
    "decomposer-sft": ("earl.train.decomposer", "DecomposerSFTRecipe", "train_decomposer_sft", None),
    "decomposer-grpo": ("earl.train.decomposer", "DecomposerGRPORecipe", "train_decomposer_grpo", None),
    # ... and the same GRPO for a transformers chat VLM (Qwen2.5-VL) as the decomposer
    "decomposer-vlm-grpo": ("earl.train.vlm_decomposer", "VLMDecomposerGRPORecipe", "train_vlm_decomposer_grpo", None),
}


def _cmd_train(args) -> None:
    module, recipe_cls, train_fn, fmt = TRAIN_STAGES[args.stage]
    mod = importlib.import_module(module)  # lazy, by name: a trainer loads torch, transformers and often trl
    cfg = load_config(getattr(mod, recipe_cls), args.recipe, args.overrides)
    report = getattr(mod, train_fn)(cfg, resume=args.resume)
    print(getattr(mod, fmt)(report) if fmt else json.dumps(report, indent=2))


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model from a YAML recipe").add_subparsers(dest="what", required=True)
    for stage, (module, *_rest) in TRAIN_STAGES.items():
        t = train.add_parser(stage, help=f"train with {module}")
        t.add_argument("recipe", help=f"YAML recipe, e.g. recipes/shapes/{stage}.yaml")
        t.add_argument("overrides", nargs="*", help="key.sub=value overrides of recipe fields")
        t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
        t.set_defaults(func=_cmd_train, stage=stage)
