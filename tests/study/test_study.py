"""`earl study`: a tiny study of every arm kind runs, aggregates honestly and resumes without redoing work."""

import json
from pathlib import Path

import pytest

from earl.config import load_config
from earl.errors import ConfigError
from earl.study import StudyRecipe, run_study

ROOT = Path(__file__).resolve().parents[2]


def tiny_study(tmp: Path, tok_dir: Path, arms: str | None = None, seeds: str = "[0, 1]") -> Path:
    sft = ("[model.size=shapes-test, model.image_size=32, 'data.train=[shapes:simple:train:48:0]', "
           "data.eval=shapes:simple:test:8, data.oracle_eval_samples=4, run.steps=4, run.batch_size=8, "
           "run.eval_every=4, run.save_every=2, run.log_every=1, optim.warmup_steps=1]")
    grpo = ("['data.train=[shapes:simple:train:48:0]', data.eval=shapes:complex:test:8, data.image_size=32, "
            "data.oracle_eval_samples=4, grpo.group_size=4, grpo.prompts_per_step=2, grpo.minibatch_size=8, "
            "run.steps=2, run.eval_every=2, run.save_every=1, grpo.sample_grid_every=0]")
    compare = "[[rl, sft_simple], [best_of_3, sft_simple]]" if arms is None else "[]"
    arms = arms or f"""
  - {{name: sft_simple, kind: sft, recipe: {ROOT}/recipes/shapes/sft.yaml}}
  - {{name: sft_cot, kind: sft, recipe: {ROOT}/recipes/shapes/sft_cot.yaml}}
  - {{name: rl, kind: grpo, recipe: {ROOT}/recipes/shapes/grpo.yaml, start: sft_simple}}
  - {{name: best_of_3, kind: best_of_n, start: sft_simple, n: 3, temperature: 1.0}}
"""
    f = tmp / "study.yaml"
    f.write_text(f"""out_dir: {tmp / "study"}
seeds: {seeds}
image_tokenizer: {tok_dir}
cache_dir: {tmp / "cache"}
eval_sets: {{simple: "shapes:simple:test:6", complex: "shapes:complex:test:6"}}
eval_batch_size: 8
sft_overrides: {sft}
grpo_overrides: {grpo}
compare: {compare}
arms:{arms}""")
    return f


@pytest.mark.slow
def test_tiny_study_runs_aggregates_and_resumes(tmp_path, tok_dir):
    cfg = load_config(StudyRecipe, tiny_study(tmp_path, tok_dir))
    results = run_study(cfg, progress=False)
    out = tmp_path / "study"
    for arm in ("sft_simple", "sft_cot", "rl"):
        for seed in (0, 1):
            assert (out / arm / f"seed_{seed}" / "model" / "editor.json").is_file()
    assert not (out / "best_of_3" / "seed_0" / "model").exists()  # best-of-N trains nothing
    # the RL arm started from the same seed's SFT model
    assert json.loads((out / "rl/seed_1/recipe.json").read_text())["init_from"] == str(out / "sft_simple/seed_1/model")

    # the aggregate is the mean of the per-seed evaluation files
    for arm in ("sft_simple", "best_of_3"):
        per_seed = []
        for seed in (0, 1):
            rows = json.loads((out / arm / f"seed_{seed}" / "eval_complex.json").read_text())["samples"]
            assert len(rows) == 6
            per_seed.append(sum(r["success"] for r in rows) / 6)
        entry = results["arms"][arm]["complex"]["success"]
        assert entry["per_seed"] == per_seed and entry["mean"] == pytest.approx(sum(per_seed) / 2)
    # best-of-N keeps the best of its draws: never below their mean, and it records that mean
    for seed in (0, 1):
        for r in json.loads((out / f"best_of_3/seed_{seed}/eval_simple.json").read_text())["samples"]:
            assert r["overall"] >= r["mean_of_n"]["overall"] - 1e-9
    diff = results["paired_differences"]["rl - sft_simple"]["simple"]["per_seed"]
    rl, sft = (results["arms"][a]["simple"]["success"]["per_seed"] for a in ("rl", "sft_simple"))
    assert diff == pytest.approx([a - b for a, b in zip(rl, sft)])
    report = (out / "report.md").read_text()
    assert all(a in report for a in ("sft_simple", "sft_cot", "rl", "best_of_3", "Per category", "GRPO diagnostics"))
    diag = results["grpo_diagnostics"]["rl"]  # from the GRPO logs, averaged over the two seeds
    logged = [json.loads(x)["reward/mean"] for seed in (0, 1)
              for x in (out / f"rl/seed_{seed}/metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
    assert diag["reward_mean"] == pytest.approx(sum(logged) / len(logged))
    assert {"zero_var_groups_first", "entropy_last", "rollout_s_mean", "eval_success_last"} <= set(diag)
    assert (out / "curves.png").stat().st_size > 1000
    times = json.loads((out / "stage_times.json").read_text())
    assert "rl/seed_1/train" in times and "best_of_3/seed_0/eval_simple" in times

    # resume: nothing finished is redone; a deleted evaluation is recomputed alone
    model_mtime = (out / "sft_simple/seed_0/model/editor.json").stat().st_mtime_ns
    (out / "sft_cot/seed_1/eval_complex.json").unlink()
    run_study(cfg, progress=False)
    assert (out / "sft_simple/seed_0/model/editor.json").stat().st_mtime_ns == model_mtime
    assert (out / "sft_cot/seed_1/eval_complex.json").is_file()
    assert json.loads((out / "stage_times.json").read_text()).keys() == times.keys()


@pytest.mark.parametrize("arms,match", [
    ("\n  - {name: a, kind: grpo, recipe: x.yaml, start: b}\n", "start 'b' must name an earlier arm"),
    ("\n  - {name: a, kind: sft, recipe: r.yaml}\n  - {name: a, kind: sft, recipe: r.yaml}\n", "used twice"),
    ("\n  - {name: a, kind: dpo, recipe: r.yaml}\n", "kind must be one of"),
    ("\n  - {name: a, kind: best_of_n, start: a}\n", "start 'a' must name an earlier arm"),
])
def test_bad_study_recipes_name_the_problem(tmp_path, tok_dir, arms, match):
    with pytest.raises(ConfigError, match=match):
        load_config(StudyRecipe, tiny_study(tmp_path, tok_dir, arms))


def test_a_bad_arm_override_fails_before_any_training(tmp_path, tok_dir):
    arms = f"\n  - {{name: s, kind: sft, recipe: {ROOT}/recipes/shapes/sft.yaml, overrides: [run.stepz=3]}}\n"
    cfg = load_config(StudyRecipe, tiny_study(tmp_path, tok_dir, arms))
    with pytest.raises(ConfigError, match="arm 's'.*run.stepz"):
        run_study(cfg, progress=False)
    assert not (tmp_path / "study" / "s").exists()


def test_a_given_editor_is_evaluated_as_is_and_starts_grpo_arms_whose_learned_rewards_are_monitored(
        tmp_path, tok_dir, tiny_editor):
    """A `given` arm trains nothing and starts GRPO arms from its directory; an arm rewarded by a learned
    verifier (here an untrained reward model) logs the oracle's verdict on its rollouts, which the
    diagnostics report; a given arm whose directory holds no editor stops the study before any work."""
    tiny_editor.save_pretrained(tmp_path / "editor")
    arms = f"""
  - {{name: start, kind: given, model: {tmp_path / "editor"}}}
  - {{name: rl, kind: grpo, recipe: {ROOT}/recipes/shapes/grpo.yaml, start: start}}
  - name: rl_rrm
    kind: grpo
    recipe: {ROOT}/recipes/shapes/grpo.yaml
    start: start
    overrides: [verifier.name=rrm, "verifier.options={{model_path: {tmp_path / "editor"}, max_new_tokens: 4}}"]
"""
    cfg = load_config(StudyRecipe, tiny_study(tmp_path, tok_dir, arms))
    results = run_study(cfg, progress=False)
    out = tmp_path / "study"
    assert not (out / "start/seed_0/model").exists() and (out / "start/seed_1/eval_simple.json").is_file()
    assert json.loads((out / "rl_rrm/seed_0/recipe.json").read_text())["init_from"] == str(tmp_path / "editor")
    assert "oracle_overall_first" in results["grpo_diagnostics"]["rl_rrm"]
    assert "oracle_overall_first" not in results["grpo_diagnostics"]["rl"]  # the oracle's own arm: no monitor
    assert "oracle on rollouts" in (out / "report.md").read_text()
    (tmp_path / "b").mkdir()
    missing = arms.replace(str(tmp_path / "editor"), str(tmp_path / "nothing"), 1)
    bad = load_config(StudyRecipe, tiny_study(tmp_path / "b", tok_dir, missing))
    with pytest.raises(ConfigError, match="arm 'start'.*not a saved editor"):
        run_study(bad, progress=False)
    with pytest.raises(ConfigError, match="`model`"):
        load_config(StudyRecipe, tiny_study(tmp_path / "b", tok_dir, "\n  - {name: s, kind: given}\n"))


def test_one_seed_reports_intervals_across_prompts_and_paired_differences_per_prompt(tmp_path, tok_dir):
    """With one seed there is no spread across seeds: success gets a Wilson interval over the test prompts
    and a comparison is the per-prompt difference of the two arms on the same prompts."""
    from earl.stats import mean_ci, wilson_ci
    from earl.study import aggregate, format_report, machine_description

    arms = f"""
  - {{name: a, kind: sft, recipe: {ROOT}/recipes/shapes/sft.yaml}}
  - {{name: b, kind: sft, recipe: {ROOT}/recipes/shapes/sft.yaml}}
"""
    f = tiny_study(tmp_path, tok_dir, arms, seeds="[3]")
    f.write_text(f.read_text().replace("compare: []", "compare: [[a, b]]"))
    cfg = load_config(StudyRecipe, f)
    succ = {"a": [1, 1, 0, 1, 0, 1], "b": [0, 1, 0, 0, 0, 1]}
    for arm, row in succ.items():
        for set_name in ("simple", "complex"):
            path = tmp_path / "study" / arm / "seed_3" / f"eval_{set_name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"samples": [{"id": str(i), "category": "add", "success": bool(x),
                                                     "overall": 7.0 * x + 1.0} for i, x in enumerate(row)]}))
    res = aggregate(cfg)
    a = res["arms"]["a"]["simple"]["success"]
    assert a["mean"] == pytest.approx(4 / 6) and a["ci"] == pytest.approx(list(wilson_ci(4, 6)))
    d = res["paired_differences"]["a - b"]["complex"]
    assert d["mean"] == pytest.approx(2 / 6) and d["ci"] == pytest.approx(list(mean_ci([1, 0, 0, 1, 0, 0], bounds=(-1, 1))))
    res["machine"], res["total_time_s"] = machine_description(), 0.0
    report = format_report(cfg, res)
    assert "interval across the test prompts" in report and "per prompt, same seed" in report


def test_grpo_diagnostics_counts_a_step_logged_again_by_a_resumed_run_once(tmp_path):
    """A GRPO run resumed from its step-2 checkpoint logs steps 3-4 again: the diagnostics (first/last
    window means, skipped updates, evaluations) must see each step once, with its last value."""
    from earl.study import ArmSection, grpo_diagnostics, run_dir

    cfg = StudyRecipe(out_dir=str(tmp_path), seeds=[0], arms=[
        ArmSection(name="base", kind="given", model="unused"),
        ArmSection(name="rl", kind="grpo", recipe="unused.yaml", start="base")])
    log = run_dir(cfg, "rl", 0) / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    rows = [{"step": 1, "reward/mean": 0.1, "update/skipped": 0.0},
            {"step": 2, "reward/mean": 0.2, "update/skipped": 1.0}, {"step": 2, "eval/success": 0.3},
            {"step": 3, "reward/mean": 9.0, "update/skipped": 1.0},  # the first run, killed after step 3
            {"step": 3, "reward/mean": 0.3, "update/skipped": 0.0},  # the resumed run, from step 2
            {"step": 4, "reward/mean": 0.4, "update/skipped": 0.0}, {"step": 4, "eval/success": 0.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = grpo_diagnostics(cfg, window=2)["rl"]
    assert d["reward_first"] == pytest.approx(0.15) and d["reward_last"] == pytest.approx(0.35)
    assert d["reward_mean"] == pytest.approx(0.25)
    assert d["skipped_updates"] == pytest.approx(0.25)  # one skipped update in four steps
    assert (d["eval_success_first"], d["eval_success_last"]) == (0.3, 0.5)


@pytest.mark.slow
def test_a_study_killed_at_a_random_point_and_resumed_reports_what_an_uninterrupted_one_does(tmp_path, tok_dir):
    """`earl study` as a process of its own, SIGKILLed at a pseudo-random moment (mid-SFT, mid-evaluation
    or mid-GRPO), run again: the same table, to the last digit, and the same weights as a run never stopped."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    arms = f"""
  - {{name: sft_simple, kind: sft, recipe: {ROOT}/recipes/shapes/sft.yaml}}
  - {{name: rl, kind: grpo, recipe: {ROOT}/recipes/shapes/grpo.yaml, start: sft_simple}}
"""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}

    def study(name: str) -> tuple[list[str], Path]:
        (tmp_path / name).mkdir()
        f = tiny_study(tmp_path / name, tok_dir, arms=arms, seeds="[0]")
        f.write_text(f.read_text().replace(f"cache_dir: {tmp_path / name / 'cache'}", f"cache_dir: {tmp_path / 'cache'}"))
        return [sys.executable, "-m", "earl.cli", "study", str(f)], tmp_path / name / "study"

    ref_cmd, ref = study("ref")
    assert subprocess.run(ref_cmd, env=env, capture_output=True).returncode == 0

    rng = random.Random(31)
    trigger = rng.choice(["sft_simple/seed_0/checkpoints", "sft_simple/seed_0/eval_simple.json", "rl/seed_0/metrics.jsonl"])
    cmd, out = study("run")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / trigger).exists():
        assert proc.poll() is None and time.time() < deadline, f"the study ended before {trigger} appeared"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "results.json").exists()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0

    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert a["arms"] == b["arms"] and a["paired_differences"] == b["paired_differences"]
    for arm in ("sft_simple", "rl"):
        wa, wb = (load_file(str(d / arm / "seed_0/model/backbone/model.safetensors")) for d in (ref, out))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), arm


def test_agent_and_scalar_reward_model_arms_with_their_own_seeds_sets_and_costs(tmp_path, tok_dir, tiny_editor):
    """A scalar reward model trained once (seed 0) is the reward of a GRPO arm's every seed; an agent arm runs
    the pipeline (here the ground-truth plan, its steps checked by the oracle) over the editor of its start,
    on its own eval sets; an arm with one seed gets intervals across prompts and pairs with each seed of a
    three-seed arm; every evaluated edit records its editor and judge calls, which the report's cost shows."""
    from earl.study import aggregate, select_arms

    tiny_editor.save_pretrained(tmp_path / "editor")
    rm = ("[data.samples=3, data.eval_samples=1, run.steps=2, run.batch_size=4, run.eval_every=2, "
          f"run.save_every=2, image_tokenizer={tmp_path / 'nowhere'}]")
    arms = f"""
  - {{name: start, kind: given, model: {tmp_path / "editor"}, seeds: [0]}}
  - {{name: rm, kind: scalar_rm, recipe: {ROOT}/recipes/shapes/rm_scalar_from_editor.yaml, start: start,
     seeds: [0], overrides: {rm}}}
  - {{name: rl_scalar, kind: grpo, recipe: {ROOT}/recipes/shapes/grpo.yaml, start: start, reward_model: rm}}
  - {{name: gt, kind: agent, start: start, decomposer: ground-truth, sets: [complex],
     agent: {{check: oracle, attempts: 2}}}}
  - {{name: gt_rl, kind: agent, start: rl_scalar, decomposer: ground-truth, seeds: [1], sets: [complex]}}
"""
    f = tiny_study(tmp_path, tok_dir, arms)
    f.write_text(f.read_text().replace("compare: []", "compare: [[gt, start], [rl_scalar, start]]"))
    cfg = load_config(StudyRecipe, f)
    results = run_study(cfg, progress=False)
    out = tmp_path / "study"
    assert (out / "rm/seed_0/model").is_dir() and not (out / "rm/seed_1").exists()
    for seed in (0, 1):
        recipe = json.loads((out / f"rl_scalar/seed_{seed}/recipe.json").read_text())
        assert recipe["verifier"]["name"] == "scalar"
        assert recipe["verifier"]["options"]["model_path"] == str(out / "rm/seed_0/model")
    assert "rm" not in results["arms"] and not (out / "gt/seed_0/eval_simple.json").exists()
    assert set(results["arms"]["gt"]) == {"complex"} and set(results["arms"]["start"]) == {"simple", "complex"}
    # the agent ran on the same seed's... GRPO-trained editor, and recorded its plan and calls per edit
    rows = json.loads((out / "gt_rl/seed_1/eval_complex.json").read_text())["samples"]
    assert len(rows) == 6 and all(r["plan"] for r in rows) and all(r["editor_calls"] >= 1 for r in rows)
    assert json.loads((out / "gt_rl/seed_1/agent_complex/results.json").read_text())["samples"]
    checked = [json.loads((out / f"gt/seed_{s}/eval_complex.json").read_text())["samples"] for s in (0, 1)]
    assert all(r["judge_calls"] >= r["editor_calls"] >= 1 for rows in checked for r in rows)  # every try judged
    entry = results["arms"]["gt"]["complex"]
    assert entry["judge_calls_per_edit"] == pytest.approx(sum(r["judge_calls"] for rows in checked for r in rows) / 12)
    assert results["arms"]["start"]["simple"]["success"]["across"] == "prompts"
    # a one-seed baseline pairs with each seed of the other arm
    start = results["arms"]["start"]["complex"]["success"]["mean"]
    diff = results["paired_differences"]["gt - start"]["complex"]["per_seed"]
    assert diff == pytest.approx([v - start for v in entry["success"]["per_seed"]])
    assert "simple" not in results["paired_differences"]["gt - start"]
    assert results["training_min"]["rl_scalar"]["total"] > results["training_min"]["rl_scalar"]["own"] > 0
    report = (out / "report.md").read_text()
    assert "editor calls" in report and "test prompts" in report and "| gt |" in report
    assert (out / "success.png").stat().st_size > 1000
    # re-running one arm elsewhere takes what it starts from along, and nothing else
    assert [a.name for a in select_arms(cfg, ["gt_rl"]).arms] == ["start", "rm", "rl_scalar", "gt_rl"]
    assert aggregate(select_arms(cfg, ["gt"]))["arms"].keys() == {"start", "gt"}


@pytest.mark.parametrize("arms,match", [
    ("\n  - {name: s, kind: given, model: m}\n  - {name: a, kind: agent, start: s, sets: [hard]}\n", "not among eval_sets"),
    ("\n  - {name: s, kind: given, model: m}\n  - {name: r, kind: grpo, recipe: g.yaml, start: s, reward_model: s}\n",
     "expected a scalar_rm arm"),
    ("\n  - {name: s, kind: sft, recipe: r.yaml, seeds: [0, 1]}\n  - {name: a, kind: agent, start: s, seeds: [2]}\n",
     "not all among 's'"),
    ("\n  - {name: s, kind: given, model: m}\n  - {name: b, kind: best_of_n, start: s}\n"
     "  - {name: a, kind: agent, start: b}\n", "expected an editor arm"),
    ("\n  - {name: s, kind: given, model: m, agent: {check: oracle}}\n", "are for agent arms"),
    ("\n  - {name: s, kind: given, model: m}\n  - {name: a, kind: agent, start: s, agent: {plans: 4}}\n",
     r"study.yaml: arms\[1\].agent: .*plans M \(> 1\), plan_votes K and plan_judge together"),
])
def test_bad_arm_references_name_the_problem(tmp_path, tok_dir, arms, match):
    with pytest.raises(ConfigError, match=match):
        load_config(StudyRecipe, tiny_study(tmp_path, tok_dir, arms))
