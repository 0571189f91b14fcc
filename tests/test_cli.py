"""The `earl` command end to end: data -> judge -> edit -> eval, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image


def earl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "earl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_data_judge_edit_eval(tmp_path, tiny_editor):
    data = tmp_path / "data"
    r = earl("data", "shapes", "--out", data, "--n", 6, "--split", "complex", "--part", "test")
    assert r.returncode == 0, r.stderr
    # judge a folder where the edited images are the targets themselves: every principle passes
    from earl.io import save_png
    from earl.shapes.dataset import load_dataset

    ds = load_dataset(data)
    for row in ds:
        save_png(row["target_image"], tmp_path / "imgs" / f"{row['id']}.png")
    r = earl("judge", "shapes", "--data", data, "--images", tmp_path / "imgs", "--out", tmp_path / "res.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["overall"]["success"] == 1.0 and res["overall"]["n"] == 6

    # edit and eval with a tiny (untrained) editor saved to disk
    tiny_editor.save_pretrained(tmp_path / "model")
    src = tmp_path / "in.png"
    ds[0]["source_image"].resize((50, 40)).save(src)
    r = earl("edit", "--model", tmp_path / "model", "--image", src, "--instruction", ds[0]["instruction"],
             "--out", tmp_path / "out.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out.png").size == (50, 40)
    r = earl("eval", "shapes", "--model", tmp_path / "model", "--data", data, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert out["overall"]["n"] == 6 and (tmp_path / "eval" / "grid.png").is_file()
    assert len(list((tmp_path / "eval" / "images").glob("*.png"))) == 6
    # resumable: a second run generates nothing new and gives the same numbers
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval" / "images").glob("*.png")}
    r = earl("eval", "shapes", "--model", tmp_path / "model", "--data", data, "--out", tmp_path / "eval")
    assert r.returncode == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval" / "images").glob("*.png")}


@pytest.mark.parametrize(
    "args,message",
    [
        (["edit", "--model", "{tmp}/nope", "--image", "x.png", "--instruction", "a", "--out", "o.png"],
         "model directory not found"),
        (["judge", "shapes", "--data", "{tmp}/nodata", "--images", "{tmp}", "--out", "{tmp}/r.json"], "nodata"),
        (["train", "sft", "{tmp}/missing.yaml"], "recipe file not found"),
        (["train", "sft", "recipes/shapes/sft.yaml", "run.steps=many"], "run.steps"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, args, message):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = earl(*[a.replace("{tmp}", str(tmp_path)) for a in args], cwd=root)
    assert r.returncode == 2
    assert r.stderr.startswith("earl: error:") and message in r.stderr
    assert "Traceback" not in r.stderr
