"""SFT: a tiny run learns, resumes, and runs unchanged on 2 CPU processes and under DeepSpeed ZeRO-2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earl.config import load_config
from earl.errors import ConfigError
from earl.train.accelerator import make_accelerator
from earl.train.checkpoints import Checkpoints
from earl.train.optim import make_optimizer, make_scheduler, step_schedule
from earl.train.sections import OptimSection, RunSection
from earl.train.sft import SFTRecipe, held_out_loss, rank_batches, train_sft

ROOT = Path(__file__).resolve().parents[2]


def tiny_overrides(tmp: Path, tok_dir: Path, **extra) -> list[str]:
    o = {
        "out_dir": str(tmp / "run"),
        "model.size": "shapes-test",
        "model.image_tokenizer": str(tok_dir),
        "model.image_size": 32,
        "data.train": "[shapes:simple:train:48:0]",
        "data.eval": "shapes:simple:test:16",
        "data.cache_dir": str(tmp / "cache"),
        "data.oracle_eval_samples": 4,
        "run.steps": 6,
        "run.batch_size": 8,
        "run.eval_every": 6,
        "run.save_every": 3,
        "run.log_every": 1,
        "optim.lr": 3e-3,
        "optim.min_lr": 3e-4,
        "optim.warmup_steps": 1,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def test_tiny_sft_learns_saves_and_resumes(tmp_path, tok_dir):
    cfg = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", tiny_overrides(tmp_path, tok_dir, **{"run.steps": 30, "run.eval_every": 30, "run.save_every": 15}))
    final = train_sft(cfg, progress=False)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["train/loss"] for x in lines if "train/loss" in x]
    assert losses[-1] < 0.6 * losses[0], losses  # the loss moved down
    assert {"eval/loss", "eval/success", "eval/sc", "eval/pq", "eval/overall"} <= set(final)
    assert (run / "model" / "editor.json").is_file()
    assert any((run / "logs").rglob("events.out.tfevents*"))
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000015", "step_0000030"]
    # resume: a run asked for 32 steps continues from step 30 and changes the weights
    before = load_file(str(ckpts[-1] / "model.safetensors"))
    first_log = (run / "metrics.jsonl").read_text().splitlines()
    cfg2 = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", tiny_overrides(tmp_path, tok_dir, **{"run.steps": 32, "run.eval_every": 100, "run.save_every": 100}))
    final2 = train_sft(cfg2, resume=True, progress=False)
    assert final2["step"] == 32
    after = load_file(str(sorted((run / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # only steps 31 and 32 were run, after the first run's log, from the trained weights (not from scratch)
    log = (run / "metrics.jsonl").read_text().splitlines()
    assert log[:len(first_log)] == first_log
    resumed = [json.loads(x) for x in log[len(first_log):]]
    assert [r["step"] for r in resumed if "train/loss" in r] == [31, 32]
    assert resumed[0]["train/loss"] < 0.6 * losses[0]


def test_cot_sft_writes_reasoning_into_the_sequence(tmp_path, tok_dir):
    cfg = load_config(SFTRecipe, ROOT / "recipes/shapes/sft_cot.yaml", tiny_overrides(tmp_path, tok_dir, **{"run.steps": 2, "run.eval_every": 2}))
    train_sft(cfg, progress=False)
    assert json.loads((tmp_path / "run/model/editor.json").read_text())["cot"] is True


def test_bad_recipe_values_name_the_field(tmp_path, tok_dir):
    with pytest.raises(ConfigError, match="run.stepz"):
        load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", ["run.stepz=3"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", ["run.mixed_precision=fp8"])
    cfg = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", tiny_overrides(tmp_path, tmp_path / "missing"))
    with pytest.raises(ConfigError, match="model.image_tokenizer"):
        train_sft(cfg, progress=False)


def _launch(tmp_path, tok_dir, extra: dict, name: str, timeout: int = 600):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    overrides = tiny_overrides(tmp_path / name, tok_dir, **{"run.steps": 3, "run.eval_every": 3, "run.save_every": 3, **extra})
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "earl.cli", "train", "sft",
           str(ROOT / "recipes/shapes/sft.yaml"), *overrides]
    stdout, stderr, returncode = run_torchrun(cmd, env, tmp_path, timeout)
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout + stderr, tmp_path / name / "run"


def run_torchrun(cmd: list[str], env: dict, cwd: Path, timeout: int) -> tuple[str, str, int]:
    """Run a torchrun command; past `timeout` (a hung run) fail the test after stopping its workers.

    torchrun starts each worker in a session of its own, so killing torchrun would leave them running
    (and holding the output pipes): SIGTERM lets torchrun stop them first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = "", ""
        pytest.fail(f"torchrun did not finish in {timeout} s (hung?):\n{stdout[-2000:]}{stderr[-2000:]}")
    return stdout, stderr, proc.returncode


def _metric(run: Path, key: str) -> dict[int, float]:
    """{step: value} of one metric in a run's metrics.jsonl; a step that lacks it is an error, not a 0."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x[key] for x in lines if key in x}


# warm-up then cosine over few steps, lr far from min_lr: a schedule stepped too fast shows at once
SCHEDULE = {"run.steps": 4, "run.eval_every": 4, "run.save_every": 4, "optim.warmup_steps": 2,
            "optim.lr": 1e-3, "optim.min_lr": 1e-4, "data.oracle_eval_samples": 0}


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_schedule(tmp_path, tok_dir):
    """Under torchrun the learning rate at every step is the 1-process run's (a schedule in optimizer steps)."""
    out, run = _launch(tmp_path, tok_dir, SCHEDULE, "ddp")
    assert "world size 2" in out
    assert (run / "model" / "editor.json").is_file()
    assert (run / "checkpoints" / "step_0000004" / "trainer_state.json").is_file()
    one = tmp_path / "one"
    train_sft(load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", tiny_overrides(one, tok_dir, **SCHEDULE)),
              progress=False)
    expected = _metric(one / "run", "train/lr")
    assert sorted(expected) == [1, 2, 3, 4]
    assert _metric(run, "train/lr") == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_an_eval_set_one_batch_long_on_two_processes(tmp_path, tok_dir):
    """8 held-out examples in batches of 8 on 2 ranks: one rank has none. The run must not hang (it did,
    in DDP's forward), and its eval loss is the 1-process one (lr 1e-12: the same weights on both)."""
    same = {"run.steps": 1, "run.eval_every": 1, "run.save_every": 1, "run.batch_size": 8,
            "data.eval": "shapes:simple:test:8", "data.oracle_eval_samples": 0, "optim.lr": 1e-12,
            "optim.min_lr": 0.0}
    _, run = _launch(tmp_path, tok_dir, same, "uneven", timeout=300)
    one = tmp_path / "one"
    train_sft(load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", tiny_overrides(one, tok_dir, **same)),
              progress=False)
    expected = _metric(one / "run", "eval/loss")
    assert list(expected) == [1]
    assert _metric(run, "eval/loss") == pytest.approx(expected, rel=1e-5)


def test_held_out_loss_is_a_mean_over_tokens(tiny_editor):
    """Batches of 3, 3 and 1 examples: the held-out loss is the loss of all 7 at once (a mean over tokens),
    not the mean of the 3 batch means; rank b % world takes batch b, padded to equal counts."""
    layout = tiny_editor.layout
    h = tiny_editor.config.image_size // 8
    gen = torch.Generator().manual_seed(0)
    words = ["make the red circle blue .", "change the square to green", "remove the small triangle"]
    ds = [layout.example(words[i % 3] + " ." * i, *torch.randint(0, layout.vocab.codebook_size, (2, h, h), generator=gen))
          for i in range(7)]
    acc = types.SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu"), process_index=0,
                                num_processes=1, reduce=lambda t, reduction: t)
    with torch.no_grad():
        whole = tiny_editor.backbone(**layout.collate(ds)).loss.item()
        means = [tiny_editor.backbone(**layout.collate(ds[i:i + 3])).loss.item() for i in (0, 3, 6)]
    assert held_out_loss(acc, tiny_editor.backbone, ds, layout.collate, 3) == pytest.approx(whole, rel=1e-5)
    assert abs(sum(means) / 3 - whole) > 1e-4  # the unweighted mean would differ
    assert rank_batches(7, 3, 0, 2) == [range(0, 3), range(6, 7)]
    assert rank_batches(7, 3, 1, 2) == [range(3, 6), range(0)]
    assert rank_batches(8, 8, 1, 2) == [range(0)]


def test_a_checkpoint_restores_the_schedule(tmp_path):
    """save_state/load_state carry the scheduler: a resumed run continues the schedule where it stopped."""
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=2, weight_decay=0.0)

    def fresh():
        acc = make_accelerator(RunSection(), tmp_path)
        model = torch.nn.Linear(2, 2)
        opt = make_optimizer(model, optim)
        return (acc, *acc.prepare(model, opt, make_scheduler(opt, optim, 6)))

    acc, model, opt, sched = fresh()
    lrs = []
    for _ in range(5):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        step_schedule(acc, sched)
        opt.zero_grad()
        lrs.append(sched.get_last_lr()[0])
        if len(lrs) == 3:
            saved = Checkpoints(tmp_path).save(acc, 3, {})
    acc, model, opt, sched = fresh()
    assert Checkpoints(tmp_path).load(acc, saved)["step"] == 3
    assert sched.get_last_lr()[0] == lrs[2]
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    step_schedule(acc, sched)
    assert sched.get_last_lr()[0] == lrs[3]


def test_deepspeed_zero2_under_torchrun(tmp_path, tok_dir):
    out, run = _launch(tmp_path, tok_dir, {"run.deepspeed": str(ROOT / "recipes/deepspeed/zero2.json"), **SCHEDULE},
                       "zero2")
    assert "world size 2" in out
    assert (run / "model" / "editor.json").is_file()
    # the schedule in optimizer steps, as stepped by hand (DeepSpeed's engine must not step it again)
    assert _metric(run, "train/lr") == pytest.approx(_hand_stepped_schedule(SCHEDULE), rel=1e-12)


def _hand_stepped_schedule(o: dict) -> dict[int, float]:
    """{step: lr} of the recipe's schedule stepped once per optimizer step, outside any trainer."""
    optim = OptimSection(lr=o["optim.lr"], min_lr=o["optim.min_lr"], warmup_steps=o["optim.warmup_steps"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched = make_scheduler(opt, optim, o["run.steps"])
    out = {}
    for step in range(1, o["run.steps"] + 1):
        opt.step()
        sched.step()
        out[step] = sched.get_last_lr()[0]
    return out


def test_bf16_mixed_precision_trains(tmp_path, tok_dir, monkeypatch):
    from earl.train import accelerator

    monkeypatch.setattr(accelerator, "cpu_has_native_bf16", lambda: True)  # the bf16 path even where it is emulated
    cfg = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml",
                      tiny_overrides(tmp_path, tok_dir, **{"run.mixed_precision": "bf16", "run.steps": 3, "run.eval_every": 3}))
    seen = set()  # the dtype of every linear layer's output while the run trains

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            seen.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        final = train_sft(cfg, progress=False)
    finally:
        hook.remove()
    assert final["step"] == 3 and final["eval/loss"] == final["eval/loss"]  # finite, not NaN
    assert torch.bfloat16 in seen, seen  # the training steps ran under bf16 autocast, not silently in fp32


def test_gradient_checkpointing_gives_the_same_gradients(tiny_editor):
    """run.gradient_checkpointing recomputes activations; the loss and gradients must not change."""
    import copy

    from earl.train.accelerator import prepare_backbone

    layout = tiny_editor.layout
    h = tiny_editor.config.image_size // 8
    codes = torch.randint(0, layout.vocab.codebook_size, (2, h, h), generator=torch.Generator().manual_seed(0))
    batch = layout.collate([layout.example("make the red circle blue .", codes[0], codes[1])])
    grads = []
    for ckpt in (False, True):
        model = copy.deepcopy(tiny_editor.backbone).train()
        prepare_backbone(model, RunSection(gradient_checkpointing=ckpt))
        assert getattr(model, "is_activation_checkpointing", None) in (ckpt, None)  # the newer name, where present
        model(**batch).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(monkeypatch, tmp_path, caplog):
    """Emulated bf16 autocast is ~15x slower than fp32 on such CPUs: the run says so and trains in fp32."""
    from earl.train import accelerator

    monkeypatch.setattr(accelerator.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accelerator, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        acc = make_accelerator(RunSection(mixed_precision="bf16"), tmp_path)
    assert acc.mixed_precision == "no" and "no native bf16" in caplog.text
    monkeypatch.setattr(accelerator, "cpu_has_native_bf16", lambda: True)
    assert make_accelerator(RunSection(mixed_precision="bf16"), tmp_path).mixed_precision == "bf16"
    assert accelerator.effective_precision("no") == "no"
