"""The tokenizer recipe: a tiny run learns and writes its outputs; resume continues exactly where it stopped
(a run killed with SIGKILL and resumed: tests/train/test_resume.py)."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earl.config import load_config
from earl.errors import ConfigError
from earl.train.tokenizer import (
    TokenizerRecipe,
    distinct_patches,
    format_report,
    lr_at,
    separation_loss,
    train_tokenizer,
)
from earl.viz import read_metrics
from tokenizer import VQTokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes/shapes/tokenizer_tiny.yaml"

# Smaller than the tiny recipe: a couple of seconds per run on 2 CPU cores.
FAST = [
    "data.n_train=256", "data.n_test=16", "data.image_size=32", "data.grid=2",
    "model.channels=8", "model.channel_mult=[1,2,2,2]", "model.latent_dim=8", "model.norm_groups=4",
    "run.batch_size=8", "run.log_every=5", "run.eval_every=10", "train.eval_batch_size=16",
]


def recipe(tmp_path, *overrides) -> TokenizerRecipe:
    return load_config(TokenizerRecipe, TINY, FAST + [f"out_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("tokenizer*.yaml")), ids=lambda p: p.name)
def test_recipes_load(path):
    cfg = load_config(TokenizerRecipe, path)
    assert cfg.data.image_size % cfg.model.downsample == 0
    assert 0 <= cfg.train.decoder_only_steps <= cfg.run.steps and cfg.run.grad_accum == 1
    assert cfg.optim.min_lr == pytest.approx(cfg.optim.lr / 20)  # both recipes decay to a twentieth of the peak


def test_the_tokenizer_refuses_run_settings_it_cannot_honour():
    for bad, match in (("run.grad_accum=2", "run.grad_accum"), ("run.gradient_checkpointing=true", "one process"),
                       ("optim.schedule=linear", "schedule is cosine"), ("train.decoder_only_steps=151", "run.steps")):
        with pytest.raises(ConfigError, match=match):
            load_config(TokenizerRecipe, TINY, ["optim.min_lr=0", bad] if "linear" in bad else [bad])


def test_tiny_run_learns_and_writes_outputs(tmp_path):
    report = train_tokenizer(recipe(tmp_path, "run.steps=80", "optim.warmup_steps=5"), progress=False)
    assert report["test_l1"] < 0.5 * report["initial_test_l1"], report
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "recon_grid.png").is_file() and (tmp_path / "recipe.json").is_file()
    assert any((tmp_path / "logs").iterdir()), "TensorBoard logs missing"
    rows = read_metrics(tmp_path)  # what `earl plot metrics` reads
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(5, 81, 5))
    assert [r["step"] for r in rows if "eval/psnr_db" in r] == list(range(10, 81, 10))
    assert rows[-1]["eval/psnr_db"] == report["psnr_db"]  # the last step's evaluation is the report's
    assert rows[-2]["train/loss"] == report["last_train_loss"]
    tok = VQTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tok.encode(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4)
    assert 0 < report["codebook_usage"] <= 1 and report["code_perplexity"] >= 1
    assert report["steps"] == 80 and report["grid"] == [4, 4]
    assert "PSNR" in format_report(report)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    # Constant lr, so that "20 steps, then resume to 30" and "30 steps" follow the same schedule.
    const = ["optim.warmup_steps=0", "optim.min_lr=5.0e-3", "run.save_every=10"]
    straight = train_tokenizer(recipe(tmp_path / "a", "run.steps=30", *const), progress=False)
    train_tokenizer(recipe(tmp_path / "b", "run.steps=20", *const), progress=False)
    meta = json.loads((tmp_path / "b/checkpoints/step_0000020/trainer_state.json").read_text())
    assert meta["step"] == 20 and {"batches", "window", "history"} <= meta["loop_state"].keys()
    resumed = train_tokenizer(recipe(tmp_path / "b", "run.steps=30", *const), progress=False, resume=True)
    assert resumed["steps"] == 30
    a = load_file(str(tmp_path / "a/tokenizer/model.safetensors"))
    b = load_file(str(tmp_path / "b/tokenizer/model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between a straight run and a resumed run"
    assert resumed["psnr_db"] == straight["psnr_db"]
    assert resumed["initial_test_l1"] == straight["initial_test_l1"]  # from the checkpoint's history
    assert sorted(p.name for p in (tmp_path / "b/checkpoints").iterdir()) == ["step_0000020", "step_0000030"]
    train = [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "b") if "train/loss" in r]
    assert train == [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "a") if "train/loss" in r]


def test_resume_refuses_a_checkpoint_of_the_old_format(tmp_path):
    old = tmp_path / "checkpoint"  # written by the trainer before it ran on the shared loop
    old.mkdir()
    (old / "state.json").write_text(json.dumps({"step": 20, "tensors": "state-20.safetensors"}))
    with pytest.raises(ConfigError, match=re.escape(f"{old}: a checkpoint in the tokenizer trainer's old format")):
        train_tokenizer(recipe(tmp_path, "run.steps=2"), progress=False, resume=True)
    train_tokenizer(recipe(tmp_path, "run.steps=2"), progress=False)  # without --resume: a new run


def test_resume_with_a_different_model_is_an_error(tmp_path):
    train_tokenizer(recipe(tmp_path, "run.steps=2"), progress=False)
    with pytest.raises(ConfigError, match="different model config"):
        train_tokenizer(recipe(tmp_path, "run.steps=4", "model.latent_dim=4"), progress=False, resume=True)


def test_bad_recipe_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="quantizer"):
        recipe(tmp_path, "model.quantizer=pq")
    with pytest.raises(ConfigError, match="not a multiple of the model's downsample"):
        recipe(tmp_path, "data.image_size=36")


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(TokenizerRecipe, TINY, ["run.steps=100", "optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr=0.1"])
    opt, steps = cfg.optim, cfg.run.steps
    assert lr_at(0, opt, steps) == pytest.approx(0.1)  # (0 + 1) / 10 of the peak
    assert lr_at(9, opt, steps) == pytest.approx(1.0)
    assert lr_at(10, opt, steps) == pytest.approx(1.0)  # cosine starts at the peak...
    assert lr_at(55, opt, steps) == pytest.approx(0.55)  # ...is halfway at the midpoint: 0.1 + 0.9 * 0.5
    assert lr_at(100, opt, steps) == pytest.approx(0.1)  # ...and ends at min_lr


LOCAL = ["model.patch_size=8", "model.channel_mult=[1]", "model.encoder_kernel=1", "model.fsq_code_embedding=true"]


def test_distinct_patches_finds_each_tile_once():
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    images[0, :, :8, :8] = 255  # one white tile; the rest black
    images[1, 0, 8:, 8:] = 7  # one dark-red tile
    tiles = distinct_patches(images, 8)
    assert tiles.shape == (3, 3, 8, 8)  # black, white, dark red


def test_separation_loss_is_the_mean_hinge_over_violating_pairs(tmp_path, monkeypatch):
    cfg = recipe(tmp_path, *LOCAL, "train.separation_weight=1.0", "train.separation_margin=1.0")
    model = VQTokenizer(cfg.model)
    bins = torch.tensor([[[0.0, 0.0]], [[0.3, -0.2]], [[2.0, 0.0]]])  # (k=3, n=1, d=2)
    monkeypatch.setattr(model.quantizer, "bin_coordinates", lambda z: bins)
    bank = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    loss = separation_loss(model, bank, cfg.train, torch.Generator().manual_seed(0))
    # Pairs (0,1): max distance 0.3 -> hinge 0.7; (0,2) 2.0 and (1,2) 1.7 -> 0. Both orders of (0,1)
    # violate, so the mean over violating entries is 0.7.
    assert loss.item() == pytest.approx(0.7)


def test_separation_needs_a_patch_local_fsq_encoder(tmp_path):
    with pytest.raises(ConfigError, match="encoder_kernel=1"):
        train_tokenizer(recipe(tmp_path, "run.steps=2", "train.separation_weight=1.0"), progress=False)


def test_decoder_only_steps_leave_the_encoder_untouched(tmp_path):
    cfg = recipe(tmp_path, *LOCAL, "run.steps=12", "train.decoder_only_steps=12", "optim.warmup_steps=0",
                 "train.separation_weight=1.0")
    torch.manual_seed(cfg.run.seed)
    initial = VQTokenizer(cfg.model).state_dict()
    train_tokenizer(cfg, progress=False)
    trained = load_file(str(tmp_path / "tokenizer/model.safetensors"))
    for k, v in trained.items():
        if k.startswith("encoder."):
            assert torch.equal(v, initial[k]), k
    assert not torch.equal(trained["decoder.conv_in.weight"], initial["decoder.conv_in.weight"])
    assert not torch.equal(trained["quantizer.code_embedding.weight"], initial["quantizer.code_embedding.weight"])
