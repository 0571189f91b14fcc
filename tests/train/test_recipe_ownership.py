"""One source per number: run.grad_accum against the trainers' own micro-batching, and the recipe's
optim.grad_clip against the DeepSpeed JSON (which would win inside DeepSpeed's engine)."""

import json
from pathlib import Path

import pytest

from earl.config import load_config
from earl.errors import ConfigError
from earl.train.accelerator import deepspeed_config
from earl.train.gcpo import GCPORecipe
from earl.train.grpo import GRPORecipe
from earl.train.sections import OptimSection, RunSection, settle_grad_accum
from earl.train.sft import SFTRecipe

ROOT = Path(__file__).resolve().parents[2]
GRPO = ["out_dir=x", "init_from=y", "grpo.group_size=8", "grpo.prompts_per_step=4", "grpo.minibatch_size=8"]


def test_grpo_derives_grad_accum_from_its_micro_batches():
    """8 x 4 rows in micro-batches of 8: 4 micro-steps per optimizer step, written into the recipe."""
    assert load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", GRPO).run.grad_accum == 4
    assert load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", GRPO + ["run.grad_accum=4"]).run.grad_accum == 4
    for wrong in (1, 2):  # an explicit 1 is a contradiction too, not "the default"
        with pytest.raises(ConfigError, match=r"run\.grad_accum: .* grpo\.minibatch_size"):
            load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", GRPO + [f"run.grad_accum={wrong}"])


def test_gcpo_refuses_an_accumulation_of_its_own():
    recipe = ROOT / "recipes/shapes/rrm_gcpo.yaml"
    assert load_config(GCPORecipe, recipe, ["out_dir=x", "init_from=y"]).run.grad_accum == 1
    with pytest.raises(ConfigError, match=r"run\.grad_accum: 2 .*gcpo\.micro_batch"):
        load_config(GCPORecipe, recipe, ["out_dir=x", "init_from=y", "run.grad_accum=2"])


def test_sft_takes_any_grad_accum_and_defaults_to_one():
    run = load_config(SFTRecipe, ROOT / "recipes/emu3/sft.yaml").run
    assert run.grad_accum == 4
    assert settle_grad_accum(RunSection()) == 1


def test_deepspeed_json_takes_clipping_and_accumulation_from_the_recipe(tmp_path):
    cfg = load_config(SFTRecipe, ROOT / "recipes/emu3/sft.yaml")
    filled = deepspeed_config(ROOT / cfg.run.deepspeed, cfg.run, cfg.optim)
    assert filled["gradient_clipping"] == 5.0 and filled["gradient_accumulation_steps"] == 4
    run = RunSection(grad_accum=2)
    filled = deepspeed_config(ROOT / "recipes/deepspeed/zero3.json", run, OptimSection(grad_clip=0.5))
    assert filled["gradient_clipping"] == 0.5 and filled["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize("key,value,field", [("gradient_clipping", 1.0, "optim.grad_clip"),
                                             ("gradient_accumulation_steps", 8, "run.grad_accum")])
def test_a_deepspeed_json_that_disagrees_with_the_recipe_is_refused(tmp_path, key, value, field):
    config = json.loads((ROOT / "recipes/emu3/zero3.json").read_text())
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**config, key: value}))
    with pytest.raises(ConfigError, match=rf"{key}: {value}.*{field}"):
        deepspeed_config(path, RunSection(grad_accum=4), OptimSection(grad_clip=5.0))
    # the same concrete value as the recipe's is no disagreement
    same = RunSection(grad_accum=value if field == "run.grad_accum" else 4)
    deepspeed_config(path, same, OptimSection(grad_clip=value if field == "optim.grad_clip" else 5.0))


def test_every_deepspeed_json_leaves_the_recipes_fields_to_the_recipe():
    files = sorted((ROOT / "recipes").rglob("*.json"))
    assert files
    for f in files:
        config = json.loads(f.read_text())
        for key in ("gradient_clipping", "gradient_accumulation_steps"):
            assert config.get(key, "auto") == "auto", f"{f}: {key} must be \"auto\" (the recipe owns it)"
