"""Training curves from metrics.jsonl: `earl plot metrics` draws them and names what is wrong."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from earl.errors import DataError, EarlError
from earl.viz import metric_points, moving_average, plot_metrics, read_metrics


def write_run(run, n_steps=50, eval_every=10):
    run.mkdir(parents=True)
    rows = []
    for step in range(1, n_steps + 1):
        rows.append({"step": step, "time": step * 0.5, "gcpo/pair_correct": (step % 2) * 1.0})
        if step % eval_every == 0:
            rows.append({"step": step, "eval/pairwise_accuracy": step / n_steps})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_moving_average_is_a_trailing_mean():
    pts = [(1, 0.0), (2, 1.0), (3, 0.0), (4, 1.0), (5, 5.0)]
    assert moving_average(pts, 2) == [(2, 0.5), (3, 0.5), (4, 0.5), (5, 3.0)]
    assert moving_average(pts, 1) == pts
    assert moving_average(pts, 0) == pts  # a window below one means no smoothing


def test_metric_points_keep_the_last_value_of_a_relogged_step():
    # a run killed at step 3 and resumed from its step-2 checkpoint logs step 3 again
    rows = [{"step": 1, "r": 0.1}, {"step": 2, "r": 0.2}, {"step": 3, "r": 9.0}, {"step": 3, "r": 0.3},
            {"step": 4, "r": float("nan")}, {"step": 4, "r": None}, {"step": 5, "other": 1.0}, {"step": 5, "r": 0.5}]
    assert metric_points(rows, "r") == [(1, 0.1), (2, 0.2), (3, 0.3), (5, 0.5)]


def test_plot_metrics_writes_one_panel_per_key(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", n_steps=30)
    out = tmp_path / "fig" / "curves.png"
    plot_metrics({"a": tmp_path / "a", "b": tmp_path / "b" / "metrics.jsonl"},
                 ["gcpo/pair_correct", "eval/pairwise_accuracy"], out, smooth=5)
    one = tmp_path / "one.png"
    plot_metrics({"a": tmp_path / "a"}, ["gcpo/pair_correct"], one)
    w2, w1 = Image.open(out).size[0], Image.open(one).size[0]
    assert w2 > 1.8 * w1  # two panels side by side
    assert not list(out.parent.glob(".*.tmp"))  # written through a temp file


def test_bad_runs_and_keys_are_named(tmp_path):
    write_run(tmp_path / "a")
    with pytest.raises(EarlError, match=r"reward/mean not logged .*logged: eval/pairwise_accuracy, gcpo/pair_correct"):
        plot_metrics({"a": tmp_path / "a"}, ["reward/mean"], tmp_path / "x.png")
    with pytest.raises(DataError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(tmp_path / "bad")
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_metrics(tmp_path):
    write_run(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "earl.cli", "plot", "metrics", f"gcpo={tmp_path / 'run'}",
                        "--key", "gcpo/pair_correct", "--smooth", "4", "--out", str(tmp_path / "c.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "c.png").format == "PNG"
    r = subprocess.run([sys.executable, "-m", "earl.cli", "plot", "metrics", str(tmp_path / "nope"),
                        "--key", "x", "--out", str(tmp_path / "d.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_cli_run_labels_are_optional_and_unique():
    """`earl plot metrics` names a bare RUN_DIR by its last component; an empty label or path, or one
    label for two runs (two runs both called .../model), is an error rather than a silently lost curve."""
    from earl.cli.common import named_paths

    assert named_paths(["runs/a", "seed 1=runs/b/model"], "run", "RUN_DIR", name_optional=True) == {
        "a": "runs/a", "seed 1": "runs/b/model"}
    for items in (["x/model", "y/model"], ["=runs/a"], ["a="]):
        with pytest.raises(EarlError, match="run"):
            named_paths(items, "run", "RUN_DIR", name_optional=True)
    with pytest.raises(EarlError, match="expected NAME=DIR"):
        named_paths(["runs/a"], "--rrm", "NAME=DIR")  # where the name is required
