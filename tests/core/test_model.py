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


@pytest.mark.slow
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
    pipe, image = EditPipeline(tiny_cot_editor), Image.new("RGB", (32, 32))
    (text,) = pipe(image, "make the red circle blue").thinking
    assert isinstance(text, str) and text.strip()  # the random model writes words before it closes the block
    assert pipe(image, "make the red circle blue").thinking == [text]  # greedy: the same text again
    assert pipe(image, "make the red circle blue", think=False).thinking == [None]
    sampled = pipe(image, "make the red circle blue", num_samples=2, temperature=1.0, seed=3).thinking
    assert len(sampled) == 2 and all(t and t.strip() for t in sampled) and sampled[0] != sampled[1]


def test_with_words_adds_vocabulary_and_keeps_what_the_model_computes(tiny_editor):
    """A reward model started from an editor: new judge words, the same function on everything old."""
    import torch

    ed = tiny_editor
    grown = ed.with_words(["judge : points : 1 . is there a zebra ? <score> 7 </score>"])
    assert "zebra" in grown.text_tokenizer.get_vocab() and "zebra" not in ed.text_tokenizer.get_vocab()
    added = len(grown.text_tokenizer) - len(ed.text_tokenizer)
    assert added > 0 and grown.layout.vocab.image_offset == ed.layout.vocab.image_offset + added
    src = torch.randint(0, ed.layout.vocab.codebook_size, (4, 4), generator=torch.Generator().manual_seed(0))
    old_ids = torch.tensor([ed.layout.prompt("make the red circle blue", src) + ed.layout.header(4, 4)])
    new_ids = torch.tensor([grown.layout.prompt("make the red circle blue", src) + grown.layout.header(4, 4)])
    assert not torch.equal(old_ids, new_ids)  # image ids moved
    with torch.no_grad():
        a, b = ed.backbone(old_ids).logits[0, -1], grown.backbone(new_ids).logits[0, -1]
    (lo, hi), (nlo, nhi) = ed.layout.vocab.image_ids, grown.layout.vocab.image_ids
    assert torch.allclose(a[lo:hi], b[nlo:nhi], atol=1e-5)  # the same next-code distribution
    assert ed.layout.vocab.image_offset == lo  # the original is untouched
