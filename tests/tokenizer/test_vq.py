"""VQTokenizer: shapes and dtypes per quantiser, save/load round trip, and clear errors on bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import ImageTokenizer, TokenizerLoadError, VQConfig, VQTokenizer, pil_to_tensor, tensor_to_pil

KINDS = ["fsq", "vq", "lfq"]


def small_config(kind: str, **overrides) -> VQConfig:
    """A few-thousand-parameter model: same code paths as the default, milliseconds per call."""
    kw = dict(channels=8, channel_mult=(1, 2, 2, 2), latent_dim=8, norm_groups=4, quantizer=kind,
              fsq_levels=(4, 4, 4), codebook_size=64)
    kw.update(overrides)
    return VQConfig(**kw)


def make_model(kind: str, **overrides) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(small_config(kind, **overrides))


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_shapes_and_dtypes(kind):
    model = make_model(kind)
    images = torch.rand(2, 3, 64, 48)
    codes = model.encode(images)
    assert codes.shape == (2, 8, 6) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < model.codebook_size
    recon = model.decode(codes)
    assert recon.shape == (2, 3, 64, 48) and recon.dtype == torch.float32
    assert 0 <= recon.min() and recon.max() <= 1
    assert model.downsample == 8
    assert isinstance(model, ImageTokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_returns_recon_codes_and_scalar_aux(kind):
    model = make_model(kind).train()
    recon, codes, aux = model(torch.rand(2, 3, 32, 32))
    assert recon.shape == (2, 3, 32, 32) and codes.shape == (2, 4, 4) and aux.shape == ()
    assert torch.isfinite(aux)
    recon.mean().backward()  # the reconstruction alone: its gradient reaches the encoder through the quantiser
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_decode_of_encode_matches_forward_in_eval(kind, codebook_dim):
    """The lookup path (decode) must agree with the quantiser's own output (forward)."""
    model = make_model(kind, vq_codebook_dim=codebook_dim).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        recon, codes, _ = model(images)
    assert torch.equal(model.encode(images), codes)
    torch.testing.assert_close(model.decode(codes), recon.clamp(0, 1), atol=1e-5, rtol=0)


def test_codebook_sizes():
    assert make_model("fsq", fsq_levels=(8, 5, 5, 5)).codebook_size == 1000
    assert make_model("vq", codebook_size=100).codebook_size == 100
    assert make_model("lfq", codebook_size=256).codebook_size == 256


def test_encode_never_updates_a_learned_codebook():
    model = make_model("vq").train()
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode(torch.rand(4, 3, 32, 32))
    assert model.training, "encode must restore the module's mode"
    for k, v in model.quantizer.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_roundtrip_gives_identical_codes_and_images(kind, tmp_path):
    model = make_model(kind)
    model.train()(torch.rand(8, 3, 32, 32))  # one training forward: vq's EMA buffers move away from init
    model.eval()
    images = torch.rand(3, 3, 32, 32)
    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VQTokenizer.from_pretrained(tmp_path / "tok")
    assert not loaded.training and loaded.config == model.config
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(TokenizerLoadError, match="directory not found"):
        VQTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerLoadError, match="config file not found"):
        VQTokenizer.from_pretrained(tmp_path / "empty")

    d = make_model("fsq").save_pretrained(tmp_path / "tok")
    cfg_path = d / "config.json"
    good = cfg_path.read_text()
    cfg_path.write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="not valid JSON"):
        VQTokenizer.from_pretrained(d)
    cfg_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(TokenizerLoadError, match="not a tokenizer config"):
        VQTokenizer.from_pretrained(d)
    meta = json.loads(good)
    meta["config"]["colour_depth"] = 3
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(TokenizerLoadError, match="unknown VQConfig field"):
        VQTokenizer.from_pretrained(d)
    meta = json.loads(good)
    meta["config"]["channels"] = 16  # the weights were saved for 8
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(TokenizerLoadError, match="does not match config.json"):
        VQTokenizer.from_pretrained(d)

    cfg_path.write_text(good)
    (d / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(TokenizerLoadError, match="not a readable safetensors"):
        VQTokenizer.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(TokenizerLoadError, match="weights file not found"):
        VQTokenizer.from_pretrained(d)
    assert issubclass(TokenizerLoadError, ValueError)


def test_bad_inputs_give_clear_errors():
    model = make_model("fsq")
    with pytest.raises(ValueError, match="not divisible by the tokenizer's downsample factor 8"):
        model.encode(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="expected 3 channels"):
        model.encode(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="float tensor of shape"):
        model.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 64\)"):
        model.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match="integer codes of shape"):
        model.decode(torch.zeros(2, 2))


def test_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="needs 5 entries in channel_mult"):
        VQConfig(channel_mult=(1, 2, 2, 4), downsample=16)
    with pytest.raises(ValueError, match="power-of-2"):
        VQConfig(quantizer="lfq", codebook_size=1000)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQConfig(quantizer="rvq")
    with pytest.raises(ValueError, match="fsq_levels"):
        VQConfig(fsq_levels=(2, 2))
    assert VQConfig(channel_mult=(1, 2)).downsample == 2


def test_pil_tensor_roundtrip_is_exact():
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (2, 16, 24, 3), dtype=torch.uint8, generator=g).numpy()
    images = [Image.fromarray(a) for a in arr]
    t = pil_to_tensor(images)
    assert t.shape == (2, 3, 16, 24) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    back = tensor_to_pil(t)
    assert all(np.array_equal(np.asarray(b), arr[i]) for i, b in enumerate(back))
    with pytest.raises(ValueError, match="share one size"):
        pil_to_tensor([images[0], images[0].resize((8, 8))])


def local_config(**overrides) -> VQConfig:
    kw = dict(patch_size=8, channels=16, channel_mult=(1,), latent_dim=8, norm_groups=4, encoder_kernel=1,
              fsq_levels=(4, 4, 4), fsq_code_embedding=True)
    kw.update(overrides)
    return VQConfig(**kw)


def test_patch_local_encoder_codes_a_patch_the_same_in_any_context():
    torch.manual_seed(0)
    model = VQTokenizer(local_config())
    images = torch.rand(2, 3, 32, 32)
    images[1, :, :8, :8] = images[0, :, :8, :8]  # same top-left patch, different surroundings
    codes = model.encode(images)
    z = model.encoder(images * 2 - 1)
    assert torch.allclose(z[0, :, 0, 0], z[1, :, 0, 0], atol=1e-5)
    assert codes[0, 0, 0] == codes[1, 0, 0]
    # The default 3x3 encoder does look at the neighbours.
    torch.manual_seed(0)
    ctx = VQTokenizer(local_config(encoder_kernel=3))
    z = ctx.encoder(images * 2 - 1)
    assert not torch.allclose(z[0, :, 0, 0], z[1, :, 0, 0], atol=1e-5)


def test_code_embedding_changes_decoding_per_code_and_survives_save_load(tmp_path):
    torch.manual_seed(0)
    model = VQTokenizer(local_config())
    codes = torch.tensor([[[3, 5], [7, 9]]])
    before = model.decode(codes)
    with torch.no_grad():
        model.quantizer.code_embedding.weight[5] += 3.0  # only code 5 moves
    after = model.decode(codes)
    changed = (after - before).abs().amax(dim=(0, 1))  # (H, W)
    assert changed[:8, 8:].max() > 1e-3  # the patch of code 5 changed...
    loaded = VQTokenizer.from_pretrained(model.save_pretrained(tmp_path / "tok"))
    assert loaded.config.fsq_code_embedding
    assert torch.equal(loaded.decode(codes), after)


def test_bin_coordinates_round_to_the_library_codes():
    torch.manual_seed(0)
    model = VQTokenizer(local_config(fsq_levels=(8, 5, 5, 5)))
    z = torch.randn(2, 8, 3, 3) * 2
    bins = model.quantizer.bin_coordinates(z)  # (2, 9, 4)
    levels = torch.tensor([8, 5, 5, 5])
    codes = model.quantizer.q.codes_to_indices(bins.round() / (levels // 2))  # (2, 9)
    _, lib_codes, _ = model.quantizer(z)
    assert torch.equal(codes.reshape(2, 3, 3).long(), lib_codes)


def test_local_encoder_needs_a_single_level():
    with pytest.raises(ValueError, match="encoder_kernel=1"):
        VQConfig(encoder_kernel=1, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="odd"):
        VQConfig(encoder_kernel=2, patch_size=8, channel_mult=(1,))


def test_saved_files_are_readable_by_others_as_open_would_make_them(tmp_path):
    """Atomic writes must not carry a temp file's private 0600 into the result (a shared checkpoint
    that only its writer can read)."""
    import os

    old = os.umask(0o022)
    try:
        d = make_model("fsq").save_pretrained(tmp_path / "tok")
    finally:
        os.umask(old)
    for f in d.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f
