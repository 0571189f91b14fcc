"""GRPO rollouts on the Jacobi schedule: the recipe's checks, log-probs the trainer can score, the cost logged."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earl.config import load_config
from earl.data import EncodedEdits
from earl.generate import GenerationCost
from earl.rl.logprobs import policy_logprobs
from earl.train.grpo import GRPORecipe, GRPOSection, collect_rollout, train_grpo
from tests.rl.test_grpo import ROOT, Redness, overrides


@pytest.mark.parametrize("kw, words", [
    ({"schedule": "parallel"}, ["grpo.schedule", "sequential, jacobi", "'parallel'"]),
    ({"schedule": "jacobi"}, ["grpo.window", "None"]),
    ({"schedule": "jacobi", "window": 0}, ["grpo.window", ">= 1", "0"]),
    ({"schedule": "jacobi", "window": True}, ["grpo.window", "True"]),
    ({"window": 4}, ["grpo.window", "4", "'sequential'"]),
])
def test_the_recipe_refuses_a_schedule_it_cannot_run(kw, words):
    with pytest.raises(ValueError) as e:
        GRPOSection(**kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_recipe_takes_the_jacobi_schedule(tmp_path):
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml",
                      [f"out_dir={tmp_path}", "grpo.schedule=jacobi", "grpo.window=8"])
    assert (cfg.grpo.schedule, cfg.grpo.window) == ("jacobi", 8)
    assert GRPOSection().schedule == "sequential" and GRPOSection().window is None


def _prompts(editor, n: int = 2, grid: int = 4) -> EncodedEdits:
    codes = torch.randint(0, editor.image_tokenizer.codebook_size, (n, grid, grid), generator=torch.Generator().manual_seed(0))
    return EncodedEdits(ids=[str(i) for i in range(n)], categories=[""] * n,
                        instructions=["make the circle red", "move the square left"][:n], reasoning=[""] * n,
                        source_scenes=[""] * n, target_scenes=[""] * n, source_codes=codes, target_codes=codes)


# the bundled editor: a random tiny editor's guesses almost never stand at temperature 1 (its
# distributions are flat), so only a trained one shows the schedule accepting several codes per forward
BUNDLED = ROOT / "checkpoints/shapes-editor"


@pytest.fixture(scope="module")
def bundled():
    from earl.model import UnifiedEditor

    return UnifiedEditor.from_pretrained(BUNDLED).eval()


def test_rollout_logprobs_are_the_policys_logprobs_of_the_sampled_codes(bundled):
    # the importance ratio's denominator: under jacobi too, the sampler's log-prob of each code is the
    # model's (tempered) log-prob of that code given the codes before it, what `policy_logprobs` recomputes
    costs = {}
    for schedule, window in [("sequential", None), ("jacobi", 4)]:
        grpo = GRPOSection(group_size=8, prompts_per_step=2, minibatch_size=8, schedule=schedule, window=window)
        costs[schedule] = cost = GenerationCost(schedule, window)
        rollout = collect_rollout(bundled, _prompts(bundled, grid=8), [0, 1], grpo,
                                  torch.Generator().manual_seed(3), cost)
        with torch.no_grad():
            lp = policy_logprobs(bundled.backbone, bundled.layout, rollout, grpo.sampling)
        assert rollout.is_image.sum() == 16 * 64
        torch.testing.assert_close(lp, rollout.old_logprobs, atol=1e-4, rtol=1e-4)
        assert cost.images == 16
    # (with the same generator the two schedules draw different codes: jacobi spends its uniforms on
    # accepting guesses, so its random stream is not the sequential sampler's)
    assert costs["jacobi"].forward_passes < costs["sequential"].forward_passes


def _run(tmp_path: Path, start: Path, name: str, **extra) -> list[dict]:
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(
        tmp_path / name, start, **{"run.steps": 2, "run.save_every": 2, "grpo.sample_grid_every": 0, **extra}))
    train_grpo(cfg, progress=False, verifier=Redness())
    return [json.loads(x) for x in (tmp_path / name / "run/metrics.jsonl").read_text().splitlines()]


def test_grpo_on_the_jacobi_schedule_trains_in_fewer_forwards(tmp_path):
    # the same 2-step run from the bundled editor on both schedules (ShapesEdit prompts at 64 px)
    seq = _run(tmp_path, BUNDLED, "seq", **{"data.image_size": 64})
    jac = _run(tmp_path, BUNDLED, "jac", **{"data.image_size": 64, "grpo.schedule": "jacobi", "grpo.window": 4})
    assert len(jac) == 2 and all(x["update/skipped"] == 0.0 for x in jac)
    before = load_file(str(BUNDLED / "backbone" / "model.safetensors"))
    after = load_file(str(tmp_path / "jac/run/model/backbone/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for s, j in zip(seq, jac):
        assert 0 < j["rollout/forward_passes"] < s["rollout/forward_passes"], (s, j)
        assert j["rollout/tokens_per_pass"] > s["rollout/tokens_per_pass"] > 0
    for x in seq + jac:  # one update per rollout: the ratio is 1, the rollout's log-probs being the policy's
        assert abs(x["update/ratio_mean"] - 1) < 1e-3, x
