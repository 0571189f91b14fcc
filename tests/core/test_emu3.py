"""Emu3 as a backbone and tokenizer: a tiny random `Emu3ForConditionalGeneration` that the test saves
with `save_pretrained`, loaded back as an earl editor and put through SFT, sampling, a GRPO loss,
decoding and a save/load roundtrip; images resized by the checkpoint's own processor rule."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from earl.emu3 import (
    PROCESSOR_DEFAULTS,
    STRUCTURAL,
    THINK_TOKENS,
    area_size,
    image_vocab_from_map,
    load_emu3_parts,
    pixels_size,
)
from earl.errors import EarlError
from earl.generate import SamplingConfig, sample_edits
from earl.model import UnifiedEditor
from earl.pipeline import EditPipeline

CODES = 64


def write_tiny_emu3(path, channel_multiplier, processor: dict):
    """A random `Emu3ForConditionalGeneration` (1024 positions) saved as transformers saves one, with a
    word-level tokenizer holding Emu3's special tokens and `processor` as its preprocessor_config.json.
    The VQ-VAE downsamples by 2 ** (len(channel_multiplier) - 1)."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    from earl.text import build_word_tokenizer

    tok = build_word_tokenizer(["make the sky red", "remove the dog", "add a hat to the man", "make it blue"])
    tok.add_tokens([*STRUCTURAL.values(), *THINK_TOKENS] + [f"<|visual token {i:06d}|>" for i in range(CODES)],
                   special_tokens=True)
    vocab = tok.get_vocab()
    torch.manual_seed(0)
    config = Emu3Config(
        vq_config=dict(codebook_size=CODES, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=channel_multiplier, num_res_blocks=1, attn_resolutions=[],
                       temporal_downsample_factor=2, hidden_size=32 * channel_multiplier[-1], num_attention_heads=1),
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
                         attention_dropout=0.0),
        vocabulary_map=vocab)
    Emu3ForConditionalGeneration(config).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                              **processor}))
    return path


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    """Downsampling by 2; the processor config names no sizes (transformers' defaults apply)."""
    return write_tiny_emu3(tmp_path_factory.mktemp("tiny-emu3"), [1, 2], {})


@pytest.fixture(scope="module")
def small_image_emu3_dir(tmp_path_factory):
    """Downsampling by 8, as Emu3's; the processor says images of at most 64x64 pixels of area."""
    return write_tiny_emu3(tmp_path_factory.mktemp("small-image-emu3"), [1, 1, 1, 1],
                           {"min_pixels": 1024, "max_pixels": 4096, "spatial_factor": 8})


@pytest.fixture(scope="module")
def editor(emu3_dir):
    return UnifiedEditor.from_parts(load_emu3_parts(emu3_dir, image_area=16 * 16)).eval()


def test_from_pretrained_recognises_an_emu3_checkpoint(emu3_dir):
    ed = UnifiedEditor.from_pretrained(emu3_dir)
    assert ed.config.image_tokenizer_kind == "emu3" and ed.config.resize_rule == "pixels"
    c = ed.config  # the processor config names no sizes: Emu3ImageProcessor's defaults
    assert (c.min_pixels, c.max_pixels, c.spatial_factor) == (512 * 512, 1024 * 1024, 8) == tuple(PROCESSOR_DEFAULTS.values())
    assert ed.kind == "editor"
    assert type(ed.backbone).__name__ == "Emu3ForCausalLM"
    vocab = json.loads((emu3_dir / "tokenizer.json").read_text())  # the checkpoint's own ids, not earl's
    assert ed.layout.vocab.boi == ed.text_tokenizer.convert_tokens_to_ids("<|image start|>")
    assert ed.layout.vocab.image_offset == ed.text_tokenizer.convert_tokens_to_ids("<|visual token 000000|>")
    assert vocab  # the tokenizer file exists and was read


def test_area_resize_rule_and_codes_roundtrip(editor):
    assert area_size(40, 20, 16 * 16, 2) == (22, 12)  # aspect kept, ~256 px, even sides
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    pil, size = editor.preprocess(img)
    assert pil.size == (22, 12) and size == (40, 20)
    codes = editor.encode_images([pil])
    assert codes.shape == (1, 6, 11) and int(codes.max()) < CODES
    out = editor.decode_codes(codes)[0]
    assert out.size == (22, 12) and editor.postprocess(out, size).size == (40, 20)


def test_sft_step_sampling_grpo_loss_and_save_load(editor, tmp_path):
    from earl.rl.logprobs import policy_logprobs, rollout_from_generation
    from earl.rl.losses import policy_loss

    src = editor.encode_images([editor.preprocess(Image.new("RGB", (16, 16), (20, 90, 200)))[0]])[0]
    tgt = editor.encode_images([editor.preprocess(Image.new("RGB", (16, 16), (220, 40, 40)))[0]])[0]
    layout = editor.layout
    # SFT: the loss on the completion backpropagates into the Emu3 text model
    batch = layout.collate([layout.example("make the sky red", src, tgt)])
    editor.backbone.train()
    loss = editor(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in editor.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    editor.backbone.zero_grad(set_to_none=True)
    editor.backbone.eval()

    # sampling: grid-constrained, with CFG, in Emu3's ids; greedy is reproducible
    cfg = SamplingConfig(temperature=1.0, guidance_scale=2.0)
    g = torch.Generator().manual_seed(0)
    out = sample_edits(editor.backbone, layout, ["make the sky red"] * 2, src[None].repeat(2, 1, 1), cfg, generator=g)
    assert out.codes.shape == (2, *src.shape)
    eol_positions = (out.completions == layout.vocab.eol).sum(1)
    assert eol_positions.tolist() == [src.shape[0]] * 2  # one <|extra_200|> per row

    # GRPO: the trainer's log-probs of the sampled tokens equal the sampler's, and the loss backpropagates
    rollout = rollout_from_generation(["make the sky red"] * 2, src[None].repeat(2, 1, 1), out, layout)
    logp = policy_logprobs(editor.backbone, layout, rollout, cfg)
    m = rollout.sampled
    assert torch.allclose(logp[m], rollout.old_logprobs[m], atol=1e-4)
    loss, _ = policy_loss(logp, rollout.old_logprobs, torch.tensor([1.0, -1.0]), m, 0.2, 0.2, None, 0.0, "grpo")
    loss.backward()
    editor.backbone.zero_grad(set_to_none=True)

    # save as an earl editor directory and load it back: same greedy edit
    greedy = SamplingConfig(temperature=0.0)
    before = sample_edits(editor.backbone, layout, ["remove the dog"], src[None], greedy).codes
    editor.save_pretrained(tmp_path / "ed")
    again = UnifiedEditor.from_pretrained(tmp_path / "ed")
    assert again.config.image_tokenizer_kind == "emu3" and again.config.image_area == 16 * 16
    after = sample_edits(again.backbone, again.layout, ["remove the dog"], src[None], greedy).codes
    assert torch.equal(before, after)
    assert torch.equal(again.encode_images([Image.new("RGB", (16, 16), (20, 90, 200))]), src[None])


def test_vocabulary_problems_are_named():
    vocab = {f"<|visual token {i:06d}|>": 100 + i for i in range(4)}
    vocab.update({t: 10 + k for k, t in enumerate([*STRUCTURAL.values(), *THINK_TOKENS])})
    assert image_vocab_from_map(vocab, 4).image_ids == (100, 104)
    gap = dict(vocab, **{"<|visual token 000003|>": 200})
    with pytest.raises(EarlError, match="not one contiguous id range"):
        image_vocab_from_map(gap, 4)
    with pytest.raises(EarlError, match="expected codes 0..4"):
        image_vocab_from_map(vocab, 5)
    no_eol = {k: v for k, v in vocab.items() if k != "<|extra_200|>"}
    with pytest.raises(EarlError, match="extra_200"):
        image_vocab_from_map(no_eol, 4)


def test_sft_recipe_on_tokenized_shards_from_an_emu3_editor(editor, tmp_path):
    """The real-scale path in miniature: tokenize a jsonl dataset with the Emu3 tokenizer (aspect kept:
    grids differ per image), then `earl train sft` from the Emu3 editor with gradient checkpointing."""
    from pathlib import Path

    from earl.config import load_config
    from earl.shards import ShardedEdits, tokenize_dataset
    from earl.train.sft import SFTRecipe, train_sft
    from tests.train.test_data_shards import jsonl_dataset

    editor.save_pretrained(tmp_path / "emu3-editor")
    spec = jsonl_dataset(tmp_path / "data", n=4, broken=None)
    Image.new("RGB", (30, 12), (9, 9, 9)).save(tmp_path / "data/imgs/in3.png")  # a wide image: another grid
    tokenize_dataset(spec, editor, tmp_path / "shards", progress=False)
    shards = ShardedEdits(tmp_path / "shards")
    assert shards[0]["source_codes"].shape != shards[3]["source_codes"].shape
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "run", "model.init_from": tmp_path / "emu3-editor", "model.image_size": 16,
            "data.train": f"[tokenized:{tmp_path / 'shards'}]", "data.eval": "null",
            "run.steps": 2, "run.batch_size": 2, "run.save_every": 2, "run.log_every": 1,
            "run.gradient_checkpointing": "true", "optim.warmup_steps": 1}
    cfg = load_config(SFTRecipe, root / "recipes/emu3/sft.yaml",
                      [f"{k}={v}" for k, v in over.items()] + ["run.deepspeed=null", "run.mixed_precision=no",
                                                                "run.grad_accum=1"])
    final = train_sft(cfg, progress=False)
    assert final["step"] == 2 and (tmp_path / "run/model/editor.json").is_file()
    assert UnifiedEditor.from_pretrained(tmp_path / "run/model").config.image_tokenizer_kind == "emu3"


def test_grpo_recipe_on_mixed_aspect_shards(editor, tmp_path):
    """`earl train grpo` from an Emu3 editor on prompts whose source grids differ (wide and square images):
    rollouts are batched per grid shape, the KL reference and gradient checkpointing are on."""
    from pathlib import Path

    from safetensors.torch import load_file

    from earl.config import load_config
    from earl.shards import tokenize_dataset
    from earl.train.grpo import GRPORecipe, train_grpo
    from tests.rl.test_grpo import Redness
    from tests.train.test_data_shards import jsonl_dataset

    editor.save_pretrained(tmp_path / "start")
    spec = jsonl_dataset(tmp_path / "data", n=3, broken=None)
    Image.new("RGB", (30, 12), (9, 9, 9)).save(tmp_path / "data/imgs/in1.png")  # a wide source: its own grid
    tokenize_dataset(spec, editor, tmp_path / "shards", progress=False)
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "run", "init_from": tmp_path / "start",
            "data.train": f"[tokenized:{tmp_path / 'shards'}]", "grpo.group_size": 2, "grpo.prompts_per_step": 3,
            "grpo.minibatch_size": 2, "grpo.sample_grid_every": 1, "optim.lr": 1e-2, "optim.min_lr": 1e-2,
            "run.steps": 2, "run.save_every": 2, "run.deepspeed": "null", "run.mixed_precision": "no"}
    cfg = load_config(GRPORecipe, root / "recipes/emu3/grpo.yaml", [f"{k}={v}" for k, v in over.items()])
    final = train_grpo(cfg, progress=False, verifier=Redness())
    assert final["step"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(r["reward/failed"] == 0 for r in rows) and any("update/kl" in r for r in rows)
    before = load_file(str(tmp_path / "start/backbone/model.safetensors"))
    after = load_file(str(tmp_path / "run/model/backbone/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "run/samples/step_000001.png").is_file()


def test_an_image_too_large_for_the_model_is_named_with_the_largest_size_that_fits(emu3_dir):
    """At 64 x 64 pixels of area the tiny Emu3 checkpoint's image is a 32 x 32 code grid (factor 2): its
    tokens alone exceed the 1024 positions. The refusal blames the image, not the instruction, with or
    without truncation, and names the largest grid (and pixel size) of its shape that fits, which does."""
    import re

    from earl.errors import EarlError
    from earl.generate import check_prompt_lengths
    from earl.pipeline import EditPipeline

    pipe = EditPipeline(UnifiedEditor.from_parts(load_emu3_parts(emu3_dir, image_area=64 * 64)))
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    messages = []
    for truncate in (False, True):
        with pytest.raises(EarlError) as e:
            pipe(img, "make the sky red", truncate_instruction=truncate)
        messages.append(msg := str(e.value))
        assert msg.startswith("the image is too large") and "32 x 32 codes, 64 x 64 pixels" in msg, msg
        assert "instruction may have at most" not in msg and "shorten" not in msg
    codes_h, codes_w, px_h, px_w = map(int, re.search(r"fits beside this instruction is (\d+) x (\d+) codes, "
                                                      r"(\d+) x (\d+) pixels", messages[0]).groups())
    assert codes_h == codes_w and (px_h, px_w) == (2 * codes_h, 2 * codes_w)
    ed, cfg = pipe.editor, SamplingConfig()
    check_prompt_lengths(ed.backbone, ed.layout, ["make the sky red"], codes_h, codes_w, cfg, False)  # fits
    with pytest.raises(EarlError, match="image is too large"):  # one code more per side does not
        check_prompt_lengths(ed.backbone, ed.layout, ["make the sky red"], codes_h + 1, codes_w + 1, cfg, False)


def test_the_checkpoints_processor_sets_the_image_size(small_image_emu3_dir, tmp_path):
    """The processor's max_pixels 4096 is honoured: a 96x64 image is edited at 72x48 (8 x 9 codes in a
    model of 1024 positions), not at EARL's 256x256 of area, which would not fit."""
    pipe = EditPipeline.from_pretrained(small_image_emu3_dir)
    c = pipe.editor.config
    assert (c.resize_rule, c.min_pixels, c.max_pixels, c.spatial_factor) == ("pixels", 1024, 4096, 8)
    assert (c.image_size, tuple(c.grid)) == (64, (8, 8))  # the nominal square: 64x64 pixels, 8x8 codes
    img = Image.new("RGB", (96, 64), (200, 30, 30))
    pil, size = pipe.editor.preprocess(img)
    assert pil.size == (72, 48) and size == (96, 64)
    assert pipe.editor.encode_images([pil]).shape == (1, 6, 9)
    result = pipe(img, "make it blue")
    assert result.images[0].size == (96, 64)
    # saved as an earl editor directory, it keeps the checkpoint's rule
    pipe.editor.save_pretrained(tmp_path / "ed")
    meta = json.loads((tmp_path / "ed/editor.json").read_text())
    assert (meta["resize_rule"], meta["max_pixels"], meta["kind"]) == ("pixels", 4096, "editor")
    assert UnifiedEditor.from_pretrained(tmp_path / "ed").preprocess(img)[0].size == (72, 48)
    # the caller's image_area chooses earl's area rule instead
    area = EditPipeline.from_pretrained(small_image_emu3_dir, image_area=32 * 32).editor
    assert area.config.resize_rule == "area" and area.preprocess(img)[0].size == (40, 24)
    with pytest.raises(EarlError, match="image_area applies to Emu3 checkpoints"):
        UnifiedEditor.from_pretrained(tmp_path / "ed", image_area=32 * 32)


def test_pixels_rule_matches_transformers_processor():
    """`pixels_size` is transformers' `smart_resize` (which takes and returns height first)."""
    from transformers.models.emu3.image_processing_emu3 import smart_resize

    for w, h in [(96, 64), (64, 96), (17, 300), (1000, 1000), (8, 8), (33, 47), (4000, 30), (512, 1024)]:
        for lo, hi, f in [(1024, 4096, 8), (512 * 512, 1024 * 1024, 8), (256, 256 * 256, 16)]:
            rh, rw = smart_resize(h, w, factor=f, min_pixels=lo, max_pixels=hi)
            assert pixels_size(w, h, lo, hi, f) == (rw, rh), (w, h, lo, hi, f)
    with pytest.raises(EarlError, match="aspect ratio"):
        pixels_size(2010, 10, 1024, 4096, 8)


def test_processor_rule_problems_are_named(emu3_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(emu3_dir, bad)
    (bad / "preprocessor_config.json").write_text(json.dumps({"spatial_factor": 3}))
    with pytest.raises(EarlError, match="spatial_factor 3 is not a multiple of the VQ-VAE's downsample factor 2"):
        UnifiedEditor.from_pretrained(bad)
    (bad / "preprocessor_config.json").write_text(json.dumps({"max_pixels": "4096"}))
    with pytest.raises(EarlError, match="max_pixels must be a positive integer"):
        UnifiedEditor.from_pretrained(bad)
