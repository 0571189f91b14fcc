"""Exactly-once, bit-exact resume through the shared training loop (`earl.train.loop`): SFT, GRPO (each also
with LoRA adapters), the scalar reward model and the VQ tokenizer, each killed with SIGKILL at a
pseudo-random point and resumed, log each step once, with the metrics, and end with the weights, of a
run never stopped."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from earl.train.accelerator import make_accelerator
from earl.train.cursor import DataCursor
from earl.train.sections import RunSection

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 60, 4  # 48 examples in batches of 8: 6 batches an epoch, so saves fall mid-epoch and at its end


def _sft_command(tmp: Path, tok_dir: Path, out: Path, resume: bool, recipe: str = "sft.yaml") -> list[str]:
    """`earl train sft` on a tiny recipe (no eval): ~20 ms a step, a few seconds a run."""
    overrides = {
        "out_dir": out, "model.size": "shapes-test", "model.image_tokenizer": tok_dir, "model.image_size": 32,
        "data.train": "[shapes:simple:train:48:0]", "data.eval": "null", "data.cache_dir": tmp / "cache",
        "run.steps": STEPS, "run.batch_size": 8, "run.save_every": SAVE_EVERY, "run.log_every": 1,
        "run.eval_every": 1000, "optim.lr": 3e-3, "optim.min_lr": 3e-4, "optim.warmup_steps": 1,
    }
    return [sys.executable, "-m", "earl.cli", "train", "sft", str(ROOT / "recipes/shapes" / recipe),
            *[f"{k}={v}" for k, v in overrides.items()], *(["--resume"] if resume else [])]


def _cot_command(tmp: Path, tok_dir: Path, out: Path, resume: bool) -> list[str]:
    """The same with the reasoning trace before the target image (`sft_cot.yaml`)."""
    return _sft_command(tmp, tok_dir, out, resume, recipe="sft_cot.yaml")


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """The trainer as a process of its own (the one the test kills), its output appended to `log`."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    """Wait for a run that must succeed; on failure show the end of its output."""
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def _logged_steps(run: Path) -> list[int]:
    """Steps of the complete lines of metrics.jsonl so far (the last one may be half written)."""
    if not (run / "metrics.jsonl").is_file():
        return []
    steps = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return steps


def _kill_after(proc: subprocess.Popen, run: Path, target_step: int, extra_delay: float, log: Path) -> None:
    """SIGKILL the trainer once a checkpoint exists and step `target_step` was logged, `extra_delay`
    seconds later (so the kill may land mid-step or mid-save)."""
    deadline = time.time() + 240
    while not (any((run / "checkpoints").glob("step_*/trainer_state.json"))
               and max(_logged_steps(run), default=0) >= target_step):
        assert proc.poll() is None, "the run ended before the kill:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "the run did not reach the kill point:\n" + log.read_text()[-3000:]
        time.sleep(0.005)
    time.sleep(extra_delay)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run had finished before the kill landed"


def _grpo_command(tmp: Path, start: Path, out: Path, resume: bool) -> list[str]:
    """`earl train grpo` from the tiny editor with the oracle's graded reward (every group has signal)."""
    overrides = {
        "out_dir": out, "init_from": start, "data.train": "[shapes:simple:train:32:0]", "data.eval": "null",
        "data.cache_dir": tmp / "cache", "data.image_size": 32, "verifier.options": "{reward: overall}",
        "grpo.group_size": 4, "grpo.prompts_per_step": 2, "grpo.minibatch_size": 4, "grpo.sample_grid_every": 0,
        "optim.lr": 3e-2, "optim.min_lr": 1e-2, "optim.warmup_steps": 1,
        "run.steps": 16, "run.save_every": SAVE_EVERY, "run.eval_every": 1000,
    }
    return [sys.executable, "-m", "earl.cli", "train", "grpo", str(ROOT / "recipes/shapes/grpo.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()], *(["--resume"] if resume else [])]


def _scalar_command(tmp: Path, tok_dir: Path, out: Path, resume: bool) -> list[str]:
    overrides = {
        "out_dir": out, "size": "shapes-test", "image_tokenizer": tok_dir, "image_size": 32, "data.samples": 8,
        "data.eval_samples": 2, "run.steps": 40, "run.batch_size": 8, "run.log_every": 1, "run.eval_every": 1000,
        "run.save_every": SAVE_EVERY, "optim.lr": 3e-3, "optim.warmup_steps": 1,
    }
    return [sys.executable, "-m", "earl.cli", "train", "rm-scalar", str(ROOT / "recipes/shapes/rm_scalar.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()], *(["--resume"] if resume else [])]


LOG_EVERY = {"tokenizer": 3}  # job -> steps between logged train metrics, where not 1


def _tokenizer_command(tmp: Path, start: Path, out: Path, resume: bool) -> list[str]:
    """`earl train tokenizer` on a tiny model and data set (~20 ms a step), with quick evaluations inside
    the run, the batch generator also drawing the separation loss's patches, and a log every 3 steps:
    the checkpoints (every 4) then fall where the logged loss, a mean over the steps since the last log,
    is half gathered."""
    overrides = {
        "out_dir": out, "data.n_train": 256, "data.n_test": 16, "data.image_size": 32, "data.grid": 2,
        "model.channels": 8, "model.channel_mult": "[1]", "model.patch_size": 8, "model.encoder_kernel": 1,
        "model.latent_dim": 8, "model.norm_groups": 4, "model.fsq_code_embedding": "true",
        "run.steps": STEPS, "train.decoder_only_steps": 10, "run.batch_size": 8, "optim.warmup_steps": 5,
        "train.separation_weight": 1.0, "train.separation_patches": 64, "run.log_every": LOG_EVERY["tokenizer"],
        "run.eval_every": 10, "run.save_every": SAVE_EVERY, "train.eval_batch_size": 16,
    }
    return [sys.executable, "-m", "earl.cli", "train", "tokenizer", str(ROOT / "recipes/shapes/tokenizer_tiny.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()], *(["--resume"] if resume else [])]


def _gcpo_command(tmp: Path, start: Path, out: Path, resume: bool) -> list[str]:
    """`earl train rrm-gcpo` from the bundled reasoning reward model (`start` unused): its traces parse,
    so steps update the weights (an untrained model's would all be skipped)."""
    overrides = {
        "out_dir": out, "init_from": ROOT / "checkpoints/shapes-rrm-lenient", "data.samples": 4,
        "data.eval_samples": 1, "gcpo.traces": 2, "gcpo.pairs_per_step": 2, "gcpo.max_new_tokens": 200,
        "run.steps": 8, "run.save_every": SAVE_EVERY, "run.eval_every": 1000, "optim.lr": 1e-4, "optim.min_lr": 1e-4,
    }
    return [sys.executable, "-m", "earl.cli", "train", "rrm-gcpo", str(ROOT / "recipes/shapes/rrm_gcpo.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()], *(["--resume"] if resume else [])]


def _lora(build):
    """The same job training LoRA adapters (`lora:` section), whose checkpoints hold the adapters alone."""
    def command(tmp: Path, start: Path, out: Path, resume: bool) -> list[str]:
        cmd = build(tmp, start, out, resume)
        at = cmd.index("--resume") if resume else len(cmd)
        return [*cmd[:at], "lora.r=4", "lora.alpha=8", *cmd[at:]]
    return command


JOBS = {  # job -> (command builder, steps, weight files compared)
    "sft": (_sft_command, STEPS, ["model/backbone/model.safetensors"]),
    "sft-cot": (_cot_command, STEPS, ["model/backbone/model.safetensors"]),
    "grpo": (_grpo_command, 16, ["model/backbone/model.safetensors"]),
    "rm-scalar": (_scalar_command, 40, ["model/backbone/model.safetensors", "model/scalar_head.safetensors"]),
    "tokenizer": (_tokenizer_command, STEPS, ["tokenizer/model.safetensors"]),
    "rrm-gcpo": (_gcpo_command, 8, ["model/backbone/model.safetensors"]),
    "sft-lora": (_lora(_sft_command), STEPS, ["model/adapter_model.safetensors"]),
    "grpo-lora": (_lora(_grpo_command), 16, ["model/adapter_model.safetensors"]),
}


def _rows(run: Path) -> list[dict]:
    """Every line of metrics.jsonl in file order (a repeated step would show), without wall-clock figures."""
    timing = ("time", "time/", "rollout/image_tokens_per_s", "train/target_tokens_per_s")
    return [{k: v for k, v in r.items() if not k.startswith(timing)}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("job", list(JOBS))
@pytest.mark.slow
def test_a_run_killed_and_resumed_matches_an_uninterrupted_one(job, tmp_path, vq_tokenizer, tiny_editor):
    build, steps, weights = JOBS[job]
    start = tmp_path / "start"  # the tokenizer for the jobs that build a model, the editor for GRPO
    (tiny_editor if job.startswith("grpo") else vq_tokenizer).save_pretrained(start)
    ref, run = tmp_path / "ref", tmp_path / "run"
    _finish(_start(build(tmp_path, start, ref, resume=False), tmp_path / "ref.log"), tmp_path / "ref.log")

    # the kill point: pseudo-random, the same on every run of the test, one or two steps past a checkpoint
    # (so that the steps logged after it must be dropped), and a little later (mid-step, or mid-save)
    rng = random.Random(f"29-{job}")
    target = SAVE_EVERY * rng.randint(1, steps // (2 * SAVE_EVERY)) + rng.randint(1, 2)
    delay = rng.uniform(0.0, 0.02)
    log = tmp_path / "run.log"
    proc = _start(build(tmp_path, start, run, resume=False), log)
    _kill_after(proc, run, target, delay, log)
    killed_at = max(_logged_steps(run))
    _finish(_start(build(tmp_path, start, run, resume=True), log), log)
    resumed_from = int(re.search(r"resumed from \S+ at step (\d+)", log.read_text()).group(1))
    assert resumed_from < killed_at  # steps were logged after the checkpoint and had to be dropped

    expected = _rows(ref)
    every = LOG_EVERY.get(job, 1)
    logged = [s for s in range(1, steps + 1) if s % every == 0 or s == steps]
    assert [r["step"] for r in expected if not any(k.startswith("eval/") for k in r)] == logged
    assert _rows(run) == expected  # each step once, bit-identical metrics
    for name in weights:
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    if job == "rrm-gcpo":  # the comparison means something only if steps updated the weights
        assert any(r.get("update/skipped") == 0.0 for r in expected)
    if job in ("sft", "sft-cot", "sft-lora", "tokenizer"):
        _assert_tensorboard_steps_once(run / "logs", logged)
    if job == "tokenizer":  # the report of the end (its timings aside) as well
        timing = ("train_seconds", "total_seconds", "tokenizer_dir")
        a, b = (json.loads((r / "report.json").read_text()) for r in (ref, run))
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def _assert_tensorboard_steps_once(logs: Path, steps: list[int]) -> None:
    """TensorBoard shows each step's loss once: the resumed writer purges what the killed run wrote after
    the checkpoint (purge_step)."""
    events = [d for d in logs.rglob("*") if d.is_dir() and any(d.glob("events.out.tfevents*"))]
    scalars = EventAccumulator(str(min(events, key=lambda d: len(d.parts)))).Reload().Scalars("train/loss")
    assert [e.step for e in scalars] == steps


def test_a_data_cursor_resumed_mid_epoch_repeats_the_order_and_leaves_global_randomness(tmp_path):
    """A cursor opened at (epoch, batch) yields what an uninterrupted one yields from there, also across
    the epoch boundary, and opening it draws nothing from the global torch RNG (dropout's, sampling's)."""
    acc = make_accelerator(RunSection(), tmp_path)
    loader = acc.prepare(DataLoader(list(range(20)), batch_size=4, shuffle=True))
    whole = DataCursor(acc, loader, seed=3)
    seen = [next(whole).tolist() for _ in range(13)]
    assert sorted(x for b in seen[:5] for x in b) == list(range(20)) and seen[:5] != seen[5:10]  # reshuffled
    loader = acc.prepare(DataLoader(list(range(20)), batch_size=4, shuffle=True))
    rest = DataCursor(acc, loader, seed=3, epoch=1, batch=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert [next(rest).tolist() for _ in range(6)] == seen[7:13]
    assert torch.equal(torch.get_rng_state(), before)
    assert rest.state() == {"epoch": 2, "batch": 3} == whole.state()


def test_a_resumed_run_continues_the_same_wandb_run_and_purges_tensorboard(tmp_path):
    """wandb is optional (not installed here): what matters is what the trackers are started with."""
    from types import SimpleNamespace

    from accelerate.utils import LoggerType

    from earl.train.metrics import tracker_init_kwargs

    both = SimpleNamespace(log_with=[LoggerType.TENSORBOARD, LoggerType.WANDB])
    first = tracker_init_kwargs(both, tmp_path, None)
    assert "tensorboard" not in first and first["wandb"]["resume"] == "allow"
    again = tracker_init_kwargs(both, tmp_path, 40)
    assert again["wandb"]["id"] == first["wandb"]["id"]  # the same run, continued
    assert again["tensorboard"] == {"purge_step": 41}
    other = tmp_path / "other"
    other.mkdir()
    assert tracker_init_kwargs(both, other, None)["wandb"]["id"] != first["wandb"]["id"]
    assert "wandb" not in tracker_init_kwargs(SimpleNamespace(log_with=[LoggerType.TENSORBOARD]), tmp_path, 3)
