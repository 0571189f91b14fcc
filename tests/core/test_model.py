import json

import pytest
import torch
from PIL import Image

from earl.errors import EarlError
from earl.generate import SamplingConfig, sample_edits
from earl.model import UnifiedEditor
from earl.pipeline import EditPipeline


def test_save_load_roundtrip_gives_identical_outputs(tiny_editor, tmp_path):
    tiny_editor.save_pretrained(tmp_path / "ed")
    loaded = UnifiedEditor.from_pretrained(tmp_path / "ed")
    files = {p.name for p in (tmp_path / "ed" / "backbone").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=1.0, guidance_scale=2.0)
    ins = ["make the red circle blue", "remove the small triangle"]
    a = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, cfg, generator=torch.Generator().manual_seed(1))
    b = sample_edits(loaded.backbone, loaded.layout, ins, codes, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.completions, b.completions)
    torch.testing.assert_close(a.logprobs, b.logprobs)
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    assert torch.equal(tiny_editor.encode_images([img]), loaded.encode_images([img]))


def test_save_overwrites_atomically(tiny_editor, tmp_path):
    tiny_editor.save_pretrained(tmp_path / "ed")
    tiny_editor.save_pretrained(tmp_path / "ed")  # second save replaces the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]  # no temp or .old dirs left behind


def test_pipeline_converts_any_image_and_restores_size(tiny_editor, tmp_path):
    pipe = EditPipeline(tiny_editor)
    rgba = Image.new("RGBA", (50, 30), (0, 0, 255, 128))
    gray = Image.new("L", (20, 20), 128)
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 0, 0))
    for im in (rgba, gray, cmyk):
        res = pipe(im, "make the red circle blue")
        assert res.images[0].size == im.size and res.images[0].mode == "RGB"
        assert res.thinking == [None]
    res = pipe(Image.new("RGB", (32, 32)), "remove the small triangle", num_samples=3, temperature=1.0, seed=4)
    assert len(res.images) == 3


def test_pipeline_bad_input_gives_clear_errors(tiny_editor, tmp_path):
    pipe = EditPipeline(tiny_editor)
    img = Image.new("RGB", (32, 32))
    with pytest.raises(EarlError, match="instruction is empty"):
        pipe(img, "   ")
    with pytest.raises(EarlError, match="not trained with chain-of-thought"):
        pipe(img, "make it red", think=True)
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(EarlError, match="bad.png: not a readable image"):
        pipe(corrupt, "make it red")
    with pytest.raises(EarlError, match="model directory not found"):
        EditPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(EarlError, match="no editor.json"):
        EditPipeline.from_pretrained(tmp_path / "half")
    (tmp_path / "half" / "editor.json").write_text(json.dumps({"cot": False}))
    with pytest.raises(EarlError, match="malformed editor config"):
        EditPipeline.from_pretrained(tmp_path / "half")


def test_cot_pipeline_returns_thinking(tiny_cot_editor):
    res = EditPipeline(tiny_cot_editor)(Image.new("RGB", (32, 32)), "make the red circle blue")
    assert isinstance(res.thinking[0], str)
