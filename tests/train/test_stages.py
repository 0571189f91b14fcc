"""The table of training stages: importable for nothing, each entry resolvable, the study's trained arms on it."""

import subprocess
import sys
from dataclasses import is_dataclass
from pathlib import Path

import pytest

from earl.train.stages import STAGES, stage_for_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_imports_no_training_package():
    code = ("import sys, earl.train.stages; heavy = [m for m in ('torch', 'transformers', 'accelerate', 'trl') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_resolves_and_has_a_recipe_in_the_repo(name):
    stage = STAGES[name]
    assert is_dataclass(stage.recipe_class()) and callable(stage.train_function())
    assert stage.report is None or callable(stage.report_function())
    recipes = [f for f in (ROOT / "recipes").rglob("*.yaml") if stage_for_recipe(f.stem) is stage]
    assert recipes, f"no recipe under recipes/ is named after the stage {name}"


def test_a_recipe_belongs_to_the_longest_stage_its_name_starts_with():
    assert stage_for_recipe("decomposer_vlm_grpo").name == "decomposer-vlm-grpo"
    assert stage_for_recipe("decomposer_grpo_f1").name == "decomposer-grpo"
    assert stage_for_recipe("rrm_sft_long").name == "rrm-sft"
    assert stage_for_recipe("study") is None


def test_the_study_trains_its_arms_with_registered_stages():
    from earl.study import ARM_KINDS

    trained = {k: kind.stage for k, kind in ARM_KINDS.items() if kind.stage is not None}
    assert trained == {"sft": "sft", "grpo": "grpo", "scalar_rm": "rm-scalar"}
    assert all(stage in STAGES for stage in trained.values())
