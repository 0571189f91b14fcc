"""Every training stage, named once: `earl train STAGE` and the study's trained arms read this table.

A stage is a recipe dataclass and a train function `train(recipe, resume=False) -> report` in one
module, plus an optional function that turns the report into lines for a person (otherwise the
report is printed as JSON). Names are kept as strings and imported when a stage is used, so that
importing this table costs nothing and pulls in no training package; adding a training stage is
one line here.

>>> STAGES["sft"].module
'earl.train.sft'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # `earl train NAME`; a recipe file is named after it (recipes/**/NAME*.yaml, "-" as "_")
    module: str  # where the recipe class and the train function live
    recipe: str  # the recipe dataclass the YAML loads into
    train: str  # train(recipe, resume=False) -> report
    report: str | None = None  # report -> text for a person; None: the report is printed as JSON
    about: str = ""  # one line on what the stage trains

    def recipe_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.recipe)

    def train_function(self) -> Callable[..., dict]:
        return getattr(importlib.import_module(self.module), self.train)

    def report_function(self) -> Callable[[dict], str] | None:
        return getattr(importlib.import_module(self.module), self.report) if self.report else None


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("tokenizer", "earl.train.tokenizer", "TokenizerRecipe", "train_tokenizer", "format_report",
          about="the VQ image tokenizer"),
    Stage("sft", "earl.train.sft", "SFTRecipe", "train_sft", about="the editor, teacher-forced"),
    Stage("grpo", "earl.train.grpo", "GRPORecipe", "train_grpo", about="the editor, GRPO on verifier rewards"),
    Stage("rrm-sft", "earl.train.rrm", "RRMRecipe", "train_rrm_sft", about="the reasoning reward model's cold start"),
    Stage("rrm-gcpo", "earl.train.gcpo", "GCPORecipe", "train_rrm_gcpo",
          about="the reasoning reward model, GCPO on preference pairs"),
    Stage("principle-writer", "earl.train.writer", "WriterRecipe", "train_principle_writer",
          about="the principle writer: ten evaluation points from (source image, instruction) alone"),
    Stage("rm-scalar", "earl.train.scalar_rm", "ScalarRecipe", "train_scalar_rm",
          about="the holistic Bradley-Terry reward model (a baseline)"),
    Stage("decomposer-sft", "earl.train.decomposer", "DecomposerSFTRecipe", "train_decomposer_sft",
          about="the decomposition agent, SFT on ground-truth plans (trl)"),
    Stage("decomposer-grpo", "earl.train.decomposer", "DecomposerGRPORecipe", "train_decomposer_grpo",
          about="the decomposition agent (policy: unified), GRPO on plan rewards (trl)"),
    Stage("decomposer-vlm-grpo", "earl.train.vlm_decomposer", "DecomposerGRPORecipe", "train_vlm_decomposer_grpo",
          about="the decomposition agent (policy: vlm, a transformers chat VLM), GRPO on plan rewards (trl)"),
)}


def stage_for_recipe(stem: str) -> Stage | None:
    """The stage a recipe file's name (without .yaml) belongs to: the longest stage name it starts with
    ("decomposer_vlm_grpo_x" is decomposer-vlm-grpo's, not decomposer-grpo's)."""
    names = [n for n in STAGES if stem.startswith(n.replace("-", "_"))]
    return STAGES[max(names, key=len)] if names else None
