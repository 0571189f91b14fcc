"""LoRA (earl.train.lora): the recipe section, the check of target names before training, checkpoints that
hold the adapters alone and resume exactly, merging back into a full editor (and refusing the wrong base),
and a KL reference that is the base with the adapters switched off."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from earl.cli import main
from earl.config import load_config
from earl.errors import ConfigError, EarlError
from earl.model import UnifiedEditor
from earl.train import checkpoints as checkpoints_module
from earl.train import grpo as grpo_module
from earl.train.decomposer import DecomposerGRPORecipe, DecomposerSFTRecipe
from earl.train.gcpo import GCPORecipe
from earl.train.grpo import GRPORecipe, train_grpo
from earl.train.lora import (
    ADAPTER_FILES,
    AdaptersOff,
    apply_lora,
    load_editor,
    merge_adapters,
    reference_model,
)
from earl.train.rrm import RRMRecipe
from earl.train.sections import LORA_TARGETS, LoraSection
from earl.train.sft import SFTRecipe, train_sft
from earl.verify.base import RewardResult

ROOT = Path(__file__).resolve().parents[1]


def sft_overrides(tmp: Path, tok_dir: Path, **extra) -> list[str]:
    o = {"out_dir": tmp / "run", "model.size": "shapes-test", "model.image_tokenizer": tok_dir, "model.image_size": 32,
         "data.train": "[shapes:simple:train:24:0]", "data.eval": "null", "data.cache_dir": tmp / "cache",
         "run.steps": 6, "run.batch_size": 8, "run.save_every": 2, "run.log_every": 1, "run.eval_every": 1000,
         "optim.lr": 1e-2, "optim.min_lr": 1e-3, "optim.warmup_steps": 1, "lora.r": 4}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


@pytest.fixture
def start(tmp_path, tiny_editor):
    return tiny_editor.save_pretrained(tmp_path / "start")


def sft(tmp: Path, tok_dir: Path, **extra):
    return load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", sft_overrides(tmp, tok_dir, **extra))


def logits(backbone, layout) -> torch.Tensor:
    batch = layout.collate([layout.example("make the red circle blue", torch.zeros(4, 4, dtype=torch.long),
                                           torch.ones(4, 4, dtype=torch.long))])
    with torch.no_grad():
        return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_the_section_parses_in_every_stage_and_checks_its_values(tmp_path, tok_dir):
    cfg = sft(tmp_path, tok_dir, **{"lora.target_modules": "[q_proj, v_proj]", "lora.alpha": 8})
    assert cfg.lora == LoraSection(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    assert load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", ["out_dir=x"]).lora is None  # full fine-tuning
    assert load_config(SFTRecipe, None, ["out_dir=x", "lora={}"]).lora.target_modules == list(LORA_TARGETS)
    for cls, required in ((GRPORecipe, ["init_from=x"]), (GCPORecipe, ["init_from=x"]), (RRMRecipe, []),
                          (DecomposerSFTRecipe, []), (DecomposerGRPORecipe, [])):
        assert load_config(cls, None, ["out_dir=x", *required, "lora.r=2"]).lora.r == 2, cls
    with pytest.raises(ConfigError, match="lora.*r >= 1"):
        sft(tmp_path, tok_dir, **{"lora.r": 0})
    with pytest.raises(ConfigError, match="lora.*target_modules is empty"):
        sft(tmp_path, tok_dir, **{"lora.target_modules": "[]"})
    with pytest.raises(ConfigError, match="lora.rank"):
        sft(tmp_path, tok_dir, **{"lora.rank": 4})


def test_a_target_that_matches_nothing_fails_before_training(tmp_path, tok_dir, tiny_editor):
    cfg = sft(tmp_path, tok_dir, **{"lora.target_modules": "[q_proj, qproj]"})
    with pytest.raises(ConfigError) as e:
        train_sft(cfg, progress=False)
    msg = str(e.value)
    assert "lora.target_modules: ['qproj']" in msg and "q_proj" in msg and "down_proj" in msg, msg
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "base").exists()
    with pytest.raises(ConfigError, match=r"lora.modules_to_save: \['head'\]"):
        apply_lora(copy.deepcopy(tiny_editor.backbone), LoraSection(modules_to_save=["head"]))


def test_checkpoints_hold_the_adapters_alone_and_merge_into_the_same_model(tmp_path, tok_dir, start):
    cfg = sft(tmp_path, tok_dir, **{"model.init_from": start, "run.steps": 4})
    before = load_file(str(start / "backbone/model.safetensors"))
    train_sft(cfg, progress=False)
    run = tmp_path / "run"
    for where in (run / "checkpoints/step_0000002", run / "model"):
        assert {f for f in ADAPTER_FILES} <= {p.name for p in where.iterdir()}, where
        assert not list(where.glob("model*.safetensors")), "full weights in a LoRA checkpoint"
        weights = load_file(str(where / "adapter_model.safetensors"))
        assert weights and all("lora_" in k for k in weights)
    record = json.loads((run / "model/adapter_base.json").read_text())
    assert record["base_model"] == str(start.resolve()) and len(record["base_sha256"]) == 64
    after = load_file(str(start / "backbone/model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base stayed as it was
    with pytest.raises(EarlError, match="LoRA adapters.*earl checkpoint merge"):
        UnifiedEditor.from_pretrained(run / "model")

    assert main(["checkpoint", "merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = UnifiedEditor.from_pretrained(tmp_path / "merged")
    from peft import PeftModel

    base = UnifiedEditor.from_pretrained(start)
    want_base = logits(base.backbone, base.layout)
    adapted = PeftModel.from_pretrained(base.backbone, str(run / "model"))
    want = logits(adapted, base.layout)
    assert not torch.allclose(want, want_base, atol=1e-4)  # the adapters learned something
    torch.testing.assert_close(logits(merged.backbone, merged.layout), want, rtol=1e-4, atol=1e-4)
    # what the study evaluates: the adapters merged in memory, the same model
    torch.testing.assert_close(logits(load_editor(run / "model").backbone, base.layout), want, rtol=1e-4, atol=1e-4)
    # a checkpoint step merges too (another step: other weights)
    step2 = merge_adapters(run / "checkpoints/step_0000002", tmp_path / "merged2")
    assert not torch.equal(logits(UnifiedEditor.from_pretrained(step2).backbone, base.layout), want)


def test_merging_into_another_base_is_refused_naming_both(tmp_path, tok_dir, start, tiny_cot_editor, vq_tokenizer,
                                                          text_tokenizer):
    train_sft(sft(tmp_path, tok_dir, **{"model.init_from": start, "run.steps": 2}), progress=False)
    adapters = tmp_path / "run/model"
    other = tiny_cot_editor.save_pretrained(tmp_path / "other")  # the same shapes, other weights
    with pytest.raises(EarlError) as e:
        merge_adapters(adapters, tmp_path / "out", base=other)
    assert str(start.resolve()) in str(e.value) and str(other) in str(e.value)
    # a base of other shapes, where no base is recorded: peft's size mismatch, said with both names
    bigger = UnifiedEditor.build("shapes-tiny", vq_tokenizer, text_tokenizer, image_size=32).save_pretrained(tmp_path / "big")
    (adapters / "adapter_base.json").unlink()
    with pytest.raises(EarlError, match="no base model recorded"):
        merge_adapters(adapters, tmp_path / "out")
    with pytest.raises(EarlError) as e:
        merge_adapters(adapters, tmp_path / "out", base=bigger)
    assert "do not fit" in str(e.value) and str(adapters) in str(e.value) and str(bigger) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_the_reference_is_the_base_with_the_adapters_off(tiny_editor):
    base = copy.deepcopy(tiny_editor.backbone)
    model = apply_lora(copy.deepcopy(tiny_editor.backbone), LoraSection(r=4, dropout=0.1))
    with torch.no_grad():  # adapters that change the output (peft starts lora_B at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.train()
    ref = reference_model(model, beta=0.1)
    assert isinstance(ref, AdaptersOff) and list(ref.parameters())  # a device can be read off it
    assert sum(p.numel() for p in ref.named_parameters()) == 0  # registers nothing: no second copy
    layout = tiny_editor.layout
    torch.testing.assert_close(logits(ref, layout), logits(base, layout), rtol=0, atol=0)
    assert model.training  # left as it was
    assert not torch.allclose(logits(model.eval(), layout), logits(base, layout), atol=1e-3)
    assert reference_model(model, beta=0.0) is None
    full = reference_model(base, beta=0.1)
    assert full is not base and not any(p.requires_grad for p in full.parameters())


class RedChannel:
    """Reward: the edited image's mean red (it differs between samples, so every group has a signal)."""

    name = "red"

    def score(self, requests):
        return [RewardResult(reward=float(np.asarray(r.edited, dtype=np.float32)[..., 0].mean() / 255))
                for r in requests]


def test_grpo_with_lora_and_a_kl_term(tmp_path, start, monkeypatch):
    """Two GRPO steps with beta > 0: the KL to the adapters-off base is logged, only adapters are written."""
    overrides = {"out_dir": tmp_path / "run", "init_from": start, "data.train": "[shapes:simple:train:8:0]",
                 "data.eval": "null", "data.cache_dir": tmp_path / "cache", "data.image_size": 32,
                 "verifier.options": "{reward: overall}", "grpo.group_size": 4, "grpo.prompts_per_step": 1,
                 "grpo.minibatch_size": 4, "grpo.sample_grid_every": 0, "grpo.beta": 0.1, "optim.lr": 3e-2,
                 "run.steps": 2, "run.save_every": 2, "run.eval_every": 1000, "lora.r": 4}
    cfg = load_config(GRPORecipe, ROOT / "recipes/shapes/grpo.yaml", [f"{k}={v}" for k, v in overrides.items()])
    refs = []
    monkeypatch.setattr(grpo_module, "reference_model", lambda model, beta: refs.append(reference_model(model, beta))
                        or refs[-1])
    train_grpo(cfg, progress=False, verifier=RedChannel())
    assert len(refs) == 1 and isinstance(refs[0], AdaptersOff)  # the base inside the policy, not a copy
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert any("update/kl" in r for r in rows), rows
    assert any(r.get("update/skipped") == 0.0 for r in rows)
    assert (tmp_path / "run/model/adapter_model.safetensors").is_file()


def test_a_lora_run_interrupted_and_resumed_matches_an_uninterrupted_one(tmp_path, tok_dir, monkeypatch):
    """From scratch (the base written to out/base), stopped right after its step-4 checkpoint, resumed."""
    train_sft(sft(tmp_path / "ref", tok_dir), progress=False)

    real_save = checkpoints_module.Checkpoints.save

    class Stop(Exception):
        pass

    def save_then_stop(self, accelerator, step, state):
        path = real_save(self, accelerator, step, state)
        if step == 4:
            raise Stop
        return path

    monkeypatch.setattr(checkpoints_module.Checkpoints, "save", save_then_stop)
    with pytest.raises(Stop):
        train_sft(sft(tmp_path / "cut", tok_dir), progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "cut/run/model").exists()
    train_sft(sft(tmp_path / "cut", tok_dir), resume=True, progress=False)

    ref, cut = tmp_path / "ref/run", tmp_path / "cut/run"
    a, b = (load_file(str(r / "model/adapter_model.safetensors")) for r in (ref, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (cut / "base/editor.json").is_file()

    def rows(run):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time", "train/target_tokens"))}
                for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(cut) == rows(ref) and [r["step"] for r in rows(ref)] == list(range(1, 7))


@pytest.mark.slow
def test_lora_under_deepspeed_zero2_on_two_cpu_processes_saves_adapters_and_resumes(tmp_path, tok_dir, start):
    """`torchrun --nproc_per_node 2` with the ZeRO-2 recipe, as tests/train/test_sft.py runs full SFT: the
    checkpoints hold the adapters and no full weights, and a run resumed from step 2 ends with the adapters
    of the run never stopped. (With ACCELERATE_USE_CPU=1 accelerate runs the ranks data-parallel on the CPU
    and DeepSpeed's engine is not started; its branch, `engine_state_kwargs`, runs on GPUs only.)"""
    import os
    import shutil
    import sys

    from tests.train.test_sft import run_torchrun

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "earl.cli", "train", "sft",
           str(ROOT / "recipes/shapes/sft.yaml"),
           *sft_overrides(tmp_path, tok_dir, **{"model.init_from": start, "run.steps": 4,
                                                "run.deepspeed": ROOT / "recipes/deepspeed/zero2.json"})]
    out, err, code = run_torchrun(cmd, env, tmp_path, 600)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "world size 2" in out + err
    run = tmp_path / "run"
    step2 = run / "checkpoints/step_0000002"
    assert {f for f in ADAPTER_FILES} <= {p.name for p in step2.iterdir()}
    assert not list(step2.rglob("model*.safetensors")) and not list(step2.rglob("*model_states.pt"))
    first = load_file(str(run / "model/adapter_model.safetensors"))

    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints/step_0000004")
    out, err, code = run_torchrun([*cmd, "--resume"], env, tmp_path, 600)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "resumed from" in out + err and "at step 2" in out + err
    again = load_file(str(run / "model/adapter_model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_the_decomposer_trains_lora_through_trl_and_merges_into_a_decomposer(tmp_path, tiny_editor):
    """trl's SFTTrainer and GRPOTrainer get `peft_config`: the run saves adapters with its base (the start
    grown by the plan token, written to out/base), and the merge is a decomposer."""
    from earl.agents.unified import UnifiedDecomposer
    from earl.train.decomposer import DecomposerData, train_decomposer_grpo, train_decomposer_sft, trl_optim
    from earl.train.sections import RunSection

    start = tiny_editor.save_pretrained(tmp_path / "start")
    data = DecomposerData(complex_samples=4, simple_samples=2, seed=0)
    lora = LoraSection(r=4, modules_to_save=["embed_tokens", "lm_head"])  # the plan token's rows train
    report = train_decomposer_sft(DecomposerSFTRecipe(
        out_dir=str(tmp_path / "sft"), init_from=str(start), data=data, lora=lora,
        run=RunSection(steps=2, batch_size=4, log_every=1, save_every=1000), optim=trl_optim(1e-3)))
    out = Path(report["out"])
    assert {f for f in ADAPTER_FILES} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_base.json").read_text())["base_model"] == str((tmp_path / "sft/base").resolve())
    merged = merge_adapters(tmp_path / "sft", tmp_path / "decomposer")
    UnifiedDecomposer.from_pretrained(merged)  # a decomposer (its plan token kept), not refused as an editor
    report = train_decomposer_grpo(DecomposerGRPORecipe(
        out_dir=str(tmp_path / "grpo"), init_from=str(merged), data=data, rewards={"format": 1.0}, num_generations=4,
        beta=0.1, lora=LoraSection(r=4), max_completion_length=8,
        run=RunSection(steps=1, batch_size=4, log_every=1, save_every=1000), optim=trl_optim(1e-4)))
    record = json.loads((Path(report["out"]) / "adapter_base.json").read_text())
    assert record["base_model"] == str(merged.resolve())


def test_the_reward_model_trains_lora_in_sft_and_gcpo(tmp_path, tiny_editor, monkeypatch):
    """RRM SFT from an editor (the base: the start with its vocabulary grown by the judge words, saved to
    out/base), merged into a reward model; then GCPO with a KL term on adapters over that model."""
    from earl.train import gcpo as gcpo_module
    from earl.train.gcpo import train_rrm_gcpo
    from earl.train.rrm import train_rrm_sft

    tiny_editor.save_pretrained(tmp_path / "editor")
    over = {"out_dir": tmp_path / "sft", "model.init_from": tmp_path / "editor", "data.samples": 3,
            "data.eval_samples": 1, "data.max_new_tokens": 8, "run.steps": 2, "run.batch_size": 4, "run.eval_every": 2,
            "run.save_every": 2, "run.mixed_precision": '"no"', "lora.r": 4,
            "lora.modules_to_save": "[embed_tokens, lm_head]"}
    train_rrm_sft(load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", [f"{k}={v}" for k, v in over.items()]),
                  progress=False)
    assert json.loads((tmp_path / "sft/model/adapter_base.json").read_text())["base_model"] == \
        str((tmp_path / "sft/base").resolve())
    rrm = merge_adapters(tmp_path / "sft", tmp_path / "rrm")
    assert UnifiedEditor.from_pretrained(rrm).kind == "reward_model"

    scores = iter([1.0, 4.0, 2.0, 3.0] * 8)  # every step has signal (as tests/rrm/test_gcpo.py scores traces)
    monkeypatch.setattr(gcpo_module, "trace_score", lambda *a: next(scores))
    over = {"out_dir": tmp_path / "gcpo", "init_from": rrm, "data.samples": 2, "data.eval_samples": 1,
            "gcpo.traces": 2, "gcpo.pairs_per_step": 1, "gcpo.max_new_tokens": 4, "gcpo.beta": 0.1, "run.steps": 2,
            "run.eval_every": 1000, "run.save_every": 2, "lora.r": 4}
    train_rrm_gcpo(load_config(GCPORecipe, ROOT / "recipes/shapes/rrm_gcpo.yaml", [f"{k}={v}" for k, v in over.items()]),
                   progress=False)
    rows = [json.loads(x) for x in (tmp_path / "gcpo/metrics.jsonl").read_text().splitlines()]
    assert any(r.get("update/skipped") == 0.0 and "update/kl" in r for r in rows), rows
    assert json.loads((tmp_path / "gcpo/model/adapter_base.json").read_text())["base_model"] == str(rrm.resolve())
