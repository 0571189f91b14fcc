"""`earl eval shapes --agent`: results in the editor evaluation's format plus the agents' record; resumable."""

import json
import subprocess
import sys

import pytest

from earl.agents.checks import OracleStepCheck
from earl.agents.decomposer import GroundTruthDecomposer
from earl.agents.editor import PipelineEditor
from earl.agents.evaluate import compare_runs, format_comparison, run_agent_eval
from earl.agents.pipeline import AgentPipeline
from earl.errors import EarlError
from earl.shapes.dataset import write_dataset


@pytest.fixture(scope="module")
def complex_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("complex")
    write_dataset(d, "complex", 6, seed=0, part="test", progress=False)
    return d


@pytest.fixture(scope="module")
def editor():
    return PipelineEditor.from_pretrained()


def _pipe(editor):  # sampled resamples: a resumed run must draw the same edits
    return AgentPipeline(GroundTruthDecomposer(), editor, check=OracleStepCheck(), attempts=3, temperature=1.0, seed=2)


class Interrupted(Exception):
    pass


class DiesAfter:
    """The pipeline, killed after `n` batches (as a kill -9 between two atomic writes would leave it)."""

    def __init__(self, pipe, n):
        self.pipe, self.n = pipe, n
        self.decomposer, self.check, self.attempts, self.temperature = pipe.decomposer, pipe.check, pipe.attempts, pipe.temperature

    def run(self, requests):
        if self.n == 0:
            raise Interrupted
        self.n -= 1
        return self.pipe.run(requests)


def _outputs(out):
    return ({p.name: p.read_bytes() for p in (out / "images").iterdir()},
            {p.name: json.loads(p.read_text()) for p in (out / "agent").iterdir()})


def test_an_interrupted_agent_evaluation_resumes_to_the_same_result(complex_set, editor, tmp_path):
    whole = run_agent_eval(_pipe(editor), complex_set, tmp_path / "whole", batch_size=2, progress=False)
    with pytest.raises(Interrupted):
        run_agent_eval(DiesAfter(_pipe(editor), 1), complex_set, tmp_path / "resumed", batch_size=2, progress=False)
    assert len(list((tmp_path / "resumed" / "images").iterdir())) == 2
    resumed = run_agent_eval(_pipe(editor), complex_set, tmp_path / "resumed", batch_size=4, progress=False)
    assert _outputs(tmp_path / "whole") == _outputs(tmp_path / "resumed")
    assert resumed["overall"] == whole["overall"] and resumed["agent"] == whole["agent"]


def test_results_carry_plans_steps_and_costs(complex_set, editor, tmp_path):
    res = run_agent_eval(_pipe(editor), complex_set, tmp_path / "r", progress=False)
    agent = res["agent"]
    assert agent["plan_f1"] == 1.0 and agent["exact_plans"] == 1.0 and agent["plan_failures"] == {}
    assert agent["editor_calls_per_edit"] >= agent["steps_per_edit"] >= 1
    for row in res["samples"]:
        assert row["plan"]["steps"] and row["n_steps"] == len(row["plan"]["steps"]) and row["agent_failure"] is None
    assert (tmp_path / "r" / "grid.png").is_file() and len(list((tmp_path / "r" / "steps").iterdir())) == 6


def test_cli_agent_eval_with_the_ground_truth_plan(complex_set, tmp_path):
    out = subprocess.run([sys.executable, "-m", "earl.cli", "eval", "shapes", "--agent", "ground-truth", "--data",
                          str(complex_set), "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "plan F1 1.000" in out.stdout and "| all | 6 |" in out.stdout
    res = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert res["model"]["decomposer"] == "ground_truth" and res["model"]["attempts"] == 1


@pytest.mark.parametrize("flags", [["--plan-judge", "oracle"], ["--plans", "4", "--plan-judge", "oracle"],
                                   ["--plans", "4", "--plan-votes", "8"]])
def test_cli_plan_choice_needs_its_three_options_together(complex_set, tmp_path, flags):
    from earl.cli import main

    assert main(["eval", "shapes", "--agent", "--data", str(complex_set), "--out", str(tmp_path / "o"), *flags]) == 2
    assert not (tmp_path / "o").exists()


def _fake_run(d, successes, agent=None):
    d.mkdir()
    samples = [{"id": f"s{i}", "success": ok} for i, ok in enumerate(successes)]
    results = {"samples": samples, "overall": {"success": sum(successes) / len(successes)},
               "per_category": {"counting": {"success": sum(successes) / len(successes)}}}
    if agent:
        results["agent"] = agent
    (d / "results.json").write_text(json.dumps(results))
    return d


def test_compare_pairs_each_run_with_the_base_on_the_same_samples(tmp_path):
    base = _fake_run(tmp_path / "base", [True, False, False, True])
    better = _fake_run(tmp_path / "better", [True, True, True, True],
                       {"plan_f1": 0.5, "exact_plans": 0.25, "editor_calls_per_edit": 2.0, "check_calls_per_edit": 1.5})
    table = compare_runs({"base": base, "better": better}, base="base")
    row = table["rows"][1]
    assert row["success"] == 1.0 and row["paired_diff"] == 0.5  # two of four samples turn from fail to pass
    lo, hi = row["paired_diff_ci"]
    assert lo < 0.5 < hi and row["editor_calls"] == 2.0 and row["plan_f1"] == 0.5
    assert "paired_diff" not in table["rows"][0] and table["rows"][0]["editor_calls"] == 1.0  # an editor alone
    text = format_comparison(table)
    assert "| better | 4 | 100.0 [" in text and "+50.0 [" in text and "(base)" in text
    other = _fake_run(tmp_path / "other", [True, True, True])
    with pytest.raises(EarlError, match="not those of"):
        compare_runs({"base": base, "other": other}, base="base")
    with pytest.raises(EarlError, match="--base 'nope'"):
        compare_runs({"base": base}, base="nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text("{}")
    with pytest.raises(EarlError, match="empty/results.json: expected an `earl eval shapes` result"):
        compare_runs({"empty": tmp_path / "empty"})
