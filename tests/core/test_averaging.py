"""`earl checkpoint average`: the mean of editors' backbone weights, and refusals of what cannot be averaged."""

import json

import pytest
import torch

from earl.averaging import average_editors
from earl.cli import main
from earl.errors import EarlError
from earl.model import UnifiedEditor


@pytest.fixture()
def two_models(tiny_editor, tmp_path):
    """The tiny editor, and a copy whose backbone was moved (as fine-tuning from it would)."""
    a = tiny_editor.save_pretrained(tmp_path / "a")
    moved = UnifiedEditor.from_pretrained(a)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in moved.backbone.parameters():
            p.add_(torch.randn_like(p))
    return a, moved.save_pretrained(tmp_path / "b")


def _params(path):
    return {k: v.clone() for k, v in UnifiedEditor.from_pretrained(path).backbone.state_dict().items()}


def test_the_average_is_the_weighted_mean_and_loads(two_models, tmp_path):
    a, b = two_models
    pa, pb = _params(a), _params(b)
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)
    average_editors([a, b], tmp_path / "mean")
    average_editors([a, b], tmp_path / "w", weights=[3, 1])
    mean, weighted = _params(tmp_path / "mean"), _params(tmp_path / "w")
    for k in pa:
        torch.testing.assert_close(mean[k], (pa[k] + pb[k]) / 2)
        torch.testing.assert_close(weighted[k], 0.75 * pa[k] + 0.25 * pb[k])
    record = json.loads((tmp_path / "w/averaging.json").read_text())
    assert record["models"] == [str(a), str(b)] and record["weights"] == [0.75, 0.25]
    # The average of a model with itself is that model, exactly.
    average_editors([a, a], tmp_path / "same")
    assert all(torch.equal(v, pa[k]) for k, v in _params(tmp_path / "same").items())
    assert not list(tmp_path.glob(".mean*")), "staging directory left behind"


def test_models_that_cannot_be_averaged_are_named(two_models, tmp_path):
    a, b = two_models
    for models, weights, match in (([a], None, "at least two"), ([a, b], [1], "2 models"),
                                   ([a, b], [1, 0], "positive"), ([a, tmp_path / "nope"], None, "not an earl editor")):
        with pytest.raises(EarlError, match=match):
            average_editors(models, tmp_path / "out", weights=weights)
    with pytest.raises(EarlError, match="must not be one of the models"):
        average_editors([a, b], a)
    (b / "text_tokenizer/tokenizer_config.json").write_text('{"other": 1}')  # another tokenizer
    with pytest.raises(EarlError, match="text_tokenizer"):
        average_editors([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_another_architecture_is_refused(tiny_editor, tmp_path):
    a = tiny_editor.save_pretrained(tmp_path / "a")
    c = tiny_editor.save_pretrained(tmp_path / "c")
    config = json.loads((c / "backbone/config.json").read_text())
    config["transformers_version"] = "0.0.0"  # written by another transformers: not a difference
    (c / "backbone/config.json").write_text(json.dumps(config))
    average_editors([a, c], tmp_path / "ok")
    config["num_hidden_layers"] += 1
    (c / "backbone/config.json").write_text(json.dumps(config))
    with pytest.raises(EarlError, match="config.json differs"):
        average_editors([a, c], tmp_path / "out")


def test_cli_average(two_models, tmp_path, capsys):
    a, b = two_models
    (a / "manifest.json").write_text("{}")  # a bundle: its hashes would not fit the average
    assert main(["checkpoint", "average", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    assert "mean of 2 models" in capsys.readouterr().out
    assert not (tmp_path / "m/manifest.json").exists()
    assert main(["checkpoint", "average", str(a), "--out", str(tmp_path / "n")]) == 2
    assert "at least two" in capsys.readouterr().err
