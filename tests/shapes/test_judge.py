"""judge_folder on a tiny dataset: targets pass, sources fail, missing/corrupt files are counted."""

import json
import shutil

import pytest

from earl.errors import DataError
from earl.io import save_png
from earl.shapes.dataset import iter_samples, write_dataset
from earl.shapes.judge import format_table, judge_folder
from earl.shapes.render import render

N = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("complex"), "complex", N, seed=0, part="test", progress=False)


def write_images(folder, data_dir, which):
    folder.mkdir()
    for s in iter_samples(data_dir):
        save_png(render(s.target_scene if which == "target" else s.source_scene), folder / f"{s.id}.png")
    return folder


def test_targets_score_perfectly(data_dir, tmp_path):
    report = judge_folder(data_dir, write_images(tmp_path / "t", data_dir, "target"), progress=False)
    o = report["overall"]
    assert o["n"] == N and o["success"] == 1.0 and (o["sc"], o["pq"], o["overall"]) == (10.0, 10.0, 10.0)
    assert o["success_ci"][0] > 0.7 and o["success_ci"][1] == 1.0
    assert o["sc_ci"] == [10.0, 10.0]  # zero variance
    assert sum(c["n"] for c in report["per_category"].values()) == N
    assert report["missing"] == [] and report["unreadable"] == []
    assert all(r["error"] is None and r["principles"] for r in report["samples"])
    json.dumps(report)


def test_sources_fail(data_dir, tmp_path):
    report = judge_folder(data_dir, write_images(tmp_path / "s", data_dir, "source"), progress=False)
    assert report["overall"]["success"] == 0.0
    assert report["overall"]["sc"] == 0.0 and report["overall"]["pq"] == 10.0


def test_missing_and_corrupt_files_are_failures_not_crashes(data_dir, tmp_path):
    folder = write_images(tmp_path / "m", data_dir, "target")
    ids = [s.id for s in iter_samples(data_dir)]
    (folder / f"{ids[0]}.png").unlink()
    (folder / f"{ids[1]}.png").write_bytes(b"garbage")
    report = judge_folder(data_dir, folder, progress=False)
    assert report["missing"] == [ids[0]]
    assert [u["id"] for u in report["unreadable"]] == [ids[1]] and f"{ids[1]}.png" in report["unreadable"][0]["reason"]
    assert report["overall"]["success"] == pytest.approx((N - 2) / N)
    rows = {r["id"]: r for r in report["samples"]}
    for bad in ids[:2]:
        assert rows[bad]["success"] is False and rows[bad]["overall"] == 0.0 and rows[bad]["error"]
    assert report["overall"]["overall"] == pytest.approx(10.0 * (N - 2) / N)
    table = format_table(report)
    assert "| all | 12 | 0.833 |" in table and "1 missing and 1 unreadable" in table
    lo, hi = report["overall"]["overall_ci"]
    assert lo < report["overall"]["overall"] < hi


def test_missing_images_dir(data_dir, tmp_path):
    with pytest.raises(DataError, match="images directory not found"):
        judge_folder(data_dir, tmp_path / "nowhere", progress=False)
    shutil.rmtree(tmp_path, ignore_errors=True)
