"""Bundled checkpoints: pack writes a manifest whose hashes verify; tampering and bad input are caught."""

import json

import pytest

from earl.checkpoint import pack_checkpoint, verify_checkpoint
from earl.cli import main
from earl.errors import EarlError
from earl.model import UnifiedEditor


def _results(path, success):
    path.write_text(json.dumps({"overall": {"success": success, "sc": 7.0, "pq": 9.0, "overall": 8.0, "n": 10},
                                "per_category": {"add": {"success": success}}, "samples": []}))
    return path


def test_pack_then_verify_and_load(tiny_editor, tmp_path):
    model = tiny_editor.save_pretrained(tmp_path / "model")
    manifest = pack_checkpoint(model, tmp_path / "ckpt", name="t", command="make it", recipe={"lr": 1},
                               evals={"simple-test": _results(tmp_path / "r.json", 0.75)})
    assert manifest["metrics"]["simple-test"]["overall"]["success"] == 0.75
    assert manifest["metrics"]["simple-test"]["per_category_success"] == {"add": 0.75}
    assert "backbone/model.safetensors" in manifest["files"]
    assert manifest["total_bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert verify_checkpoint(tmp_path / "ckpt") == manifest
    UnifiedEditor.from_pretrained(tmp_path / "ckpt")  # the manifest does not disturb loading
    # Re-packing replaces the directory as a whole.
    pack_checkpoint(model, tmp_path / "ckpt", name="t2", command="")
    assert json.loads((tmp_path / "ckpt/manifest.json").read_text())["name"] == "t2"
    assert not list(tmp_path.glob(".ckpt*")), "staging or old directories left behind"


def test_pack_records_a_reward_models_held_out_evaluation(tiny_editor, tmp_path):
    final = tmp_path / "final_metrics.json"  # what `earl train rrm-sft` writes at its end
    final.write_text(json.dumps({"eval/point_accuracy": 0.9, "eval/scan_objects_right": 0.95,
                                 "train/loss": 0.02, "step": 2700, "wall_time_s": 1.0}))
    manifest = pack_checkpoint(tiny_editor.save_pretrained(tmp_path / "model"), tmp_path / "ckpt", name="rrm",
                               command="", evals={"held-out": final})
    assert manifest["metrics"]["held-out"] == {
        "held_out": {"eval/point_accuracy": 0.9, "eval/scan_objects_right": 0.95}, "step": 2700}
    final.write_text(json.dumps({"train/loss": 0.02, "step": 2700}))  # no evaluation in it
    with pytest.raises(EarlError, match="final_metrics.json: not a readable results.json"):
        pack_checkpoint(tmp_path / "model", tmp_path / "ckpt2", name="rrm", command="", evals={"x": final})


def test_pack_records_an_agent_evaluations_plan_figures(tiny_editor, tmp_path):
    """`earl eval shapes --agent` results carry an `agent` block: the manifest keeps its plan figures (and
    only those: per-step pass rates and check costs are run details), and an editor's results get none."""
    agent = {"plan_failures": {"truncated": 2}, "plan_f1": 0.65, "exact_plans": 0.565, "steps_per_edit": 1.65,
             "step_pass_rate": None, "editor_calls_per_edit": 1.7, "check_calls_per_edit": 0.0, "fallbacks": 0}
    results = json.loads(_results(tmp_path / "r.json", 0.5).read_text())
    (tmp_path / "agent.json").write_text(json.dumps({**results, "agent": agent}))
    manifest = pack_checkpoint(tiny_editor.save_pretrained(tmp_path / "model"), tmp_path / "ckpt", name="d",
                               command="", evals={"complex-test": tmp_path / "agent.json",
                                                  "simple-test": tmp_path / "r.json"})
    assert manifest["metrics"]["complex-test"]["agent"] == {
        "plan_f1": 0.65, "exact_plans": 0.565, "steps_per_edit": 1.65, "editor_calls_per_edit": 1.7,
        "plan_failures": {"truncated": 2}}
    assert manifest["metrics"]["complex-test"]["overall"]["success"] == 0.5
    assert "agent" not in manifest["metrics"]["simple-test"]
    assert verify_checkpoint(tmp_path / "ckpt")["metrics"] == manifest["metrics"]


def test_verify_catches_a_changed_or_missing_file(tiny_editor, tmp_path):
    pack_checkpoint(tiny_editor.save_pretrained(tmp_path / "model"), tmp_path / "ckpt", name="t", command="")
    weights = tmp_path / "ckpt/backbone/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(EarlError, match="backbone/model.safetensors: sha256 differs"):
        verify_checkpoint(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(EarlError, match="missing"):
        verify_checkpoint(tmp_path / "ckpt")


def test_pack_refuses_bad_input(tiny_editor, tmp_path):
    with pytest.raises(EarlError, match="no editor.json"):
        pack_checkpoint(tmp_path, tmp_path / "ckpt", name="t", command="")
    model = tiny_editor.save_pretrained(tmp_path / "model")
    with pytest.raises(EarlError, match="over the"):
        pack_checkpoint(model, tmp_path / "ckpt", name="t", command="", max_bytes=1000)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EarlError, match="bad.json: not valid JSON"):
        pack_checkpoint(model, tmp_path / "ckpt", name="t", command="", evals={"x": tmp_path / "bad.json"})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EarlError, match="list.json: not a readable results.json"):
        pack_checkpoint(model, tmp_path / "ckpt", name="t", command="", evals={"x": tmp_path / "list.json"})
    (tmp_path / "odd.json").write_text("{}")
    with pytest.raises(EarlError, match="odd.json: not a readable results.json"):
        pack_checkpoint(model, tmp_path / "ckpt", name="t", command="", evals={"x": tmp_path / "odd.json"})
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(EarlError, match="no manifest.json"):
        verify_checkpoint(model)


def test_cli_pack_and_verify(tiny_editor, tmp_path, capsys):
    model = tiny_editor.save_pretrained(tmp_path / "model")
    r = _results(tmp_path / "r.json", 0.5)
    assert main(["checkpoint", "pack", "--model", str(model), "--out", str(tmp_path / "ck"), "--eval", f"s={r}"]) == 0
    assert "s: success 0.500" in capsys.readouterr().out
    assert main(["checkpoint", "verify", str(tmp_path / "ck")]) == 0
    assert main(["checkpoint", "pack", "--model", str(model), "--out", str(tmp_path / "ck"), "--eval", "nopath"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
