"""GRPO: a learnable reward goes up, a zero reward changes nothing, 2 CPU processes run."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from earl.config import load_config
from earl.train.grpo import GRPORecipe, train_grpo
from earl.train.optim import make_scheduler
from earl.train.sections import OptimSection
from earl.verify.base import RewardResult

ROOT = Path(__file__).resolve().parents[2]


class Redness:
    """Reward = how red the edited image's top-left 8x8 patch is (R - (G + B) / 2, scaled to [0, 1]).

    One patch is (mostly) one code, so the reward varies strongly between samples even with the
    untrained decoder of the test tokenizer; whole-image means average that variation away.
    """

    name = "redness"

    def score(self, requests):
        out = []
        for r in requests:
            a = np.asarray(r.edited, dtype=np.float32)[:8, :8] / 255.0
            red = float((a[..., 0] - (a[..., 1] + a[..., 2]) / 2).mean())
            out.append(RewardResult(reward=(red + 1) / 2, scores={"red": red}))
        return out


class Zero:
    name = "zero"

    def score(self, requests):
        return [RewardResult(reward=0.0) for _ in requests]


class FlakyJudge:
    """Fails every third request, as a judge server under load might."""

    name = "flaky"

    def __init__(self):
        self.calls = 0

    def score(self, requests):
        out = []
        for r in requests:
            self.calls += 1
            out.append(RewardResult.failure("timeout") if self.calls % 3 == 0 else Redness().score([r])[0])
        return out


@pytest.fixture
def start(tmp_path, tiny_editor):
    tiny_editor.save_pretrained(tmp_path / "start")
    return tmp_path / "start"


def overrides(tmp: Path, start: Path, **extra):
    o = {
        "out_dir": str(tmp / "run"), "init_from": str(start),
        "data.train": "[shapes:simple:train:32:0]", "data.eval": "null", "data.cache_dir": str(tmp / "cache"),
        "data.image_size": 32,
        "grpo.group_size": 8, "grpo.prompts_per_step": 2, "grpo.minibatch_size": 8, "grpo.sample_grid_every": 5,
        # lr != min_lr, so a schedule stepped at the wrong rate changes what the runs log (train/lr)
        "optim.lr": 3e-2, "optim.min_lr": 1e-2, "optim.warmup_steps": 1, "optim.weight_decay": 0.1,
        "run.steps": 12, "run.save_every": 6, "run.eval_every": 1000,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def rewards_of(run: Path) -> list[float]:
    return [json.loads(x)["reward/mean"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_grpo_raises_a_learnable_reward(tmp_path, start):
    # a constant lr: 16 steps of the tiny model learn too little once the cosine decays (the schedule
    # is checked by the tests that log train/lr)
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(
        tmp_path, start, **{"run.steps": 16, "optim.min_lr": 3e-2, "optim.warmup_steps": 0}))
    train_grpo(cfg, progress=False, verifier=Redness())
    r = rewards_of(tmp_path / "run")
    assert np.mean(r[-4:]) > np.mean(r[:4]) + 0.01, r
    assert (tmp_path / "run/samples/step_000005.png").is_file()
    assert (tmp_path / "run/model/editor.json").is_file()


@pytest.mark.slow
def test_zero_reward_leaves_the_weights_unchanged(tmp_path, start):
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 3}))
    train_grpo(cfg, progress=False, verifier=Zero())
    before = load_file(str(start / "backbone" / "model.safetensors"))
    after = load_file(str(tmp_path / "run/model/backbone/model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(x["update/skipped"] == 1.0 for x in lines)


@pytest.mark.slow
def test_failed_rewards_are_counted_and_resume_continues(tmp_path, start):
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 2, "run.save_every": 2}))
    train_grpo(cfg, progress=False, verifier=FlakyJudge())
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(x["reward/failed"] > 0 for x in lines)
    cfg2 = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 3}))
    final = train_grpo(cfg2, resume=True, progress=False, verifier=FlakyJudge())
    assert final["step"] == 3
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 3  # 2 steps, then 1 more


def expected_lrs(optim: dict, total: int, every: int = 1) -> list[float]:
    """The learning rate after every `every` optimizer steps of the shared schedule, stepped by hand."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim["lr"])
    sched = make_scheduler(opt, OptimSection(**optim), total)
    out = []
    for i in range(1, total + 1):
        opt.step()
        sched.step()
        if i % every == 0:
            out.append(sched.get_last_lr()[0])
    return out


@pytest.mark.parametrize("updates", [1, 2])
@pytest.mark.slow
def test_the_schedule_counts_optimizer_steps(tmp_path, start, updates):
    """Two micro-batches per pass and `updates` passes per step: the warm-up and cosine run over
    steps x updates optimizer steps, not over micro-batches."""
    optim = {"lr": 3e-2, "min_lr": 3e-3, "warmup_steps": 1, "weight_decay": 0.1}
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(
        tmp_path, start, **{"run.steps": 3, "run.save_every": 3, "grpo.updates_per_rollout": updates,
                            **{f"optim.{k}": v for k, v in optim.items()}}))
    train_grpo(cfg, progress=False, verifier=Redness())
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [x["update/skipped"] for x in lines] == [0.0] * 3  # every step stepped the optimizer
    assert [x["train/lr"] for x in lines] == pytest.approx(expected_lrs(optim, 3 * updates, every=updates))


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
@pytest.mark.slow
def test_micro_batching_does_not_change_the_loss_or_gradient(tmp_path, start, loss):
    """One prompt x 16 samples (the same rollout either way), every third judgement failed so the two
    halves hold different token and sequence counts: the step's loss and gradient norm are the same
    in one micro-batch of 16 as in two of 8 (the loss is over the whole batch, not per micro-batch)."""
    logged = []
    for mb in (16, 8):
        cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(
            tmp_path, start, **{"out_dir": str(tmp_path / f"mb{mb}"), "run.steps": 1, "grpo.group_size": 16,
                                "grpo.prompts_per_step": 1, "grpo.minibatch_size": mb, "grpo.loss": loss}))
        train_grpo(cfg, progress=False, verifier=FlakyJudge())
        logged.append(json.loads((tmp_path / f"mb{mb}/metrics.jsonl").read_text().splitlines()[0]))
    one, two = logged
    assert one["reward/failed"] == two["reward/failed"] == 5.0
    assert two["update/loss"] == pytest.approx(one["update/loss"], rel=1e-4, abs=1e-7)
    assert two["update/grad_norm"] == pytest.approx(one["update/grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_grpo_with_the_oracle_on_two_cpu_processes(tmp_path, start):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "earl.cli", "train", "grpo",
           str(ROOT / "recipes/shapes/grpo.yaml"), *overrides(tmp_path, start, **{"run.steps": 2, "run.save_every": 2})]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout + proc.stderr
    assert (tmp_path / "run/checkpoints/step_0000002/trainer_state.json").is_file()
    # the 1-process schedule at every step: the lr after as many optimizer steps as the run has made
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    done = np.cumsum([x["update/skipped"] == 0.0 for x in lines])
    optim = {"lr": 3e-2, "min_lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.1}
    after = [0.0] + expected_lrs(optim, 2)  # warm-up from 0
    assert [x["train/lr"] for x in lines] == pytest.approx([after[n] for n in done])
    assert all(math.isfinite(x["reward/mean"]) for x in lines)


def test_oracle_monitor_by_hand(monkeypatch):
    """The hacking monitor: the oracle's mean verdict on the rollout, its correlation with the learned reward
    over valid samples, and the share of oracle-ordered pairs inside each group the reward orders alike
    (ties wrong, masked samples left out)."""
    from earl.train import grpo
    from earl.verify.oracle import OracleVerifier

    overall = [2.0, 5.0, 8.0, 4.0, 4.0, 1.0]
    success = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    monkeypatch.setattr(OracleVerifier, "score", lambda self, reqs: [
        RewardResult(reward=o / 10, scores={"overall": o, "success": s}) for o, s in zip(overall, success)])
    rewards = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    valid = torch.tensor([[True, True, True], [False, True, True]])
    m = grpo.oracle_monitor([None] * 6, rewards, valid)
    assert m["monitor/oracle_overall"] == pytest.approx(4.0) and m["monitor/oracle_success"] == pytest.approx(1 / 6)
    # group 0: 5>2 agreed, 8>2 agreed, 8>5 reversed; group 1 (first sample masked): 4>1 tied -> 2 of 4
    assert m["monitor/pair_agreement"] == pytest.approx(0.5) and m["monitor/oracle_pairs"] == 4.0
    expected = np.corrcoef([0.1, 0.9, 0.5, 0.3, 0.3], [2.0, 5.0, 8.0, 4.0, 1.0])[0, 1]
    assert m["monitor/reward_oracle_corr"] == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(OracleVerifier, "score", lambda self, reqs: [RewardResult.failure("no scene")] * 6)
    assert grpo.oracle_monitor([None] * 6, rewards, valid) == {}


@pytest.mark.slow
def test_a_learned_reward_is_logged_beside_the_oracles_verdict(tmp_path, start, monkeypatch):
    """With a verifier other than the oracle, every step logs the oracle's verdict on the same rollout; a
    reward that ties everything agrees on no oracle-ordered pair. `monitor_oracle: false` turns it off."""
    from earl.verify.oracle import OracleVerifier

    # the untrained editor's edits all get the same verdict (no pair to order): vary it, so the
    # agreement is measured at every step rather than left out
    monkeypatch.setattr(OracleVerifier, "score", lambda self, reqs: [
        RewardResult(reward=(i % 4) / 4, scores={"overall": float(i % 4), "success": 0.0}) for i in range(len(reqs))])
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 2}))
    train_grpo(cfg, progress=False, verifier=Zero())
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [x["monitor/oracle_overall"] for x in lines] == [1.5, 1.5]
    assert [x["monitor/pair_agreement"] for x in lines] == [0.0, 0.0]  # a missing key is an error, not a 0
    assert all(x["monitor/oracle_pairs"] > 0 for x in lines)
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml",
                      overrides(tmp_path, start, **{"run.steps": 1, "out_dir": str(tmp_path / "off"),
                                                    "grpo.monitor_oracle": "false"}))
    train_grpo(cfg, progress=False, verifier=Zero())
    assert "monitor/oracle_overall" not in (tmp_path / "off/metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once(tmp_path, start):
    """Killed after logging step 3 but before checkpointing it (the last checkpoint is step 2): the
    resumed run logs step 3 again, and metrics.jsonl keeps one line per step."""
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 2, "run.save_every": 2}))
    train_grpo(cfg, progress=False, verifier=Redness())
    path = tmp_path / "run/metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[-1].replace('"step": 2', '"step": 3')]) + "\n")  # the lost step
    cfg2 = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", overrides(tmp_path, start, **{"run.steps": 4}))
    train_grpo(cfg2, resume=True, progress=False, verifier=Redness())
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
