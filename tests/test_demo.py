"""README command 1 at smoke size: `earl demo --fast` runs every stage and ends with the complex-edit table."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_fast_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "earl.cli", "demo", "--fast", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, env={"OMP_NUM_THREADS": "1",
                                                                          **__import__("os").environ})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "demo finished" in r.stdout
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["overall"]["n"] == 32
    assert (out / "eval" / "grid.png").is_file() and (out / "tokenizer" / "report.json").is_file()
    assert (out / "sft" / "model" / "editor.json").is_file()
    # it ends on complex edits three ways (bundled editor, after GRPO, agent pipeline) on the same prompts
    table = (out / "complex_table.md").read_text()
    assert all(label in table for label in ("bundled editor", "editor after GRPO", "agent pipeline", "(base)"))
    assert (out / "grpo" / "model" / "editor.json").is_file() and (out / "complex_grid.png").is_file()
    for run in ("complex_editor", "complex_grpo", "complex_agent"):
        assert json.loads((out / run / "results.json").read_text())["overall"]["n"] == 16
    agent = json.loads((out / "complex_agent" / "results.json").read_text())["agent"]
    assert agent["editor_calls_per_edit"] > 1  # complex edits become several simple steps
