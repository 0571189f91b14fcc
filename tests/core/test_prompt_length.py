"""An instruction longer than the model can take is refused with the limit and the lengths in tokens,
by the sampler, `EditPipeline` and `earl edit`, unless truncation is asked for."""

import pytest
import torch
from PIL import Image

from earl.errors import EarlError
from earl.generate import SamplingConfig, context_limit, instruction_budget, sample_edits
from earl.pipeline import EditPipeline

LONG = "Make the red circle blue and " * 345  # 10,005 characters


@pytest.fixture(scope="module")
def pipe():
    return EditPipeline.from_pretrained()


@pytest.fixture
def image():
    return Image.new("RGB", (64, 64), "white")


def test_the_bundled_model_s_limit_and_budget(pipe):
    assert context_limit(pipe.editor.backbone) == 864
    budget = instruction_budget(pipe.editor.backbone, pipe.editor.layout, 8, 8, SamplingConfig(), False)
    assert 600 < budget < 864
    assert len(pipe.editor.layout.encode_text(LONG)) > 2000


def test_pipeline_refuses_a_too_long_instruction_naming_limit_and_length(pipe, image):
    n = len(pipe.editor.layout.encode_text(LONG))
    with pytest.raises(EarlError) as e:
        pipe(image, LONG)
    msg = str(e.value)
    assert "864 tokens" in msg and f"({n} of them the instruction)" in msg and "truncat" in msg, msg


@pytest.mark.slow
def test_sampler_refuses_it_too_and_counts_the_completion(pipe):
    ed = pipe.editor
    budget = instruction_budget(ed.backbone, ed.layout, 8, 8, SamplingConfig(), False)
    fits = " ".join(["a"] * 2000)
    ids = ed.layout.encode_text(fits)[:budget]
    exact = ed.layout.tok.decode(ids)
    assert len(ed.layout.encode_text(exact)) == budget
    codes = torch.zeros(1, 8, 8, dtype=torch.long)
    sample_edits(ed.backbone, ed.layout, [exact], codes, SamplingConfig(temperature=0.0))  # the last that fits
    with pytest.raises(EarlError, match="864"):
        sample_edits(ed.backbone, ed.layout, [exact + " a"], codes, SamplingConfig(temperature=0.0))


@pytest.mark.slow
def test_truncation_when_asked(pipe, image):
    ed = pipe.editor
    res = pipe(image, LONG, truncate_instruction=True)
    assert res.images[0].size == (64, 64)
    budget = instruction_budget(ed.backbone, ed.layout, 8, 8, SamplingConfig(temperature=0.0), False)
    from earl.generate import fit_instruction

    cut = fit_instruction(ed.layout, LONG, budget)
    assert LONG.startswith(cut) and len(ed.layout.encode_text(cut)) <= budget
    assert len(ed.layout.encode_text(cut)) >= budget - 2
    assert fit_instruction(ed.layout, "Make it blue.", budget) == "Make it blue."  # short ones are untouched


@pytest.mark.slow
def test_earl_edit_refuses_in_one_line_or_truncates(tmp_path, capsys, image):
    from earl.cli import main

    image.save(tmp_path / "in.png")
    args = ["edit", "--image", str(tmp_path / "in.png"), "--instruction", LONG, "--out", str(tmp_path / "o.png")]
    assert main(args) == 2
    err = capsys.readouterr().err  # (transformers' weight-loading bar may come first)
    last = err.rstrip("\n").rpartition("\n")[2]
    assert last.startswith("earl: error: the instruction is too long") and "864 tokens" in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
    assert main([*args, "--truncate-instruction"]) == 0
    assert (tmp_path / "o.png").is_file()
