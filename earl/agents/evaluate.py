"""`earl eval shapes --agent`: the agent pipeline evaluated exactly as `earl eval shapes --model` evaluates an editor.

Per sample: the final image goes to OUT/images/{id}.png (judged by the oracle with the same code
as an editor's evaluation) and the agents' record to OUT/agent/{id}.json: the plan, its steps with
their instructions, attempts and step-check verdicts, the failure kind if any, and the editor and
check calls it cost. Both are written atomically and a sample with both files is never redone, so
a killed evaluation resumes where it stopped; each sample's randomness comes from its id, so a
resumed run equals an uninterrupted one. results.json is the editor evaluation's format plus
`agent`: plan failures by kind, steps per plan, plan F1 against the ground truth, per-step pass
rate, and editor/check calls per edit.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from earl.agents.firewall import agent_request, pipeline_reads_answer
from earl.agents.plan import Plan, plan_f1
from earl.agents.records import summarise_records
from earl.agents.shapes import program_plan
from earl.errors import EarlError
from earl.io import atomic_write_json, load_image, read_json, save_png
from earl.shapes.dataset import load_dataset
from earl.shapes.judge import judge_folder
from earl.shapes.program import EditProgram
from earl.shapes.scene import Scene
from earl.stats import mean_ci, proportion
from earl.viz import image_grid


def run_agent_eval(pipeline, data_dir, out_dir, batch_size: int = 64, progress: bool = True,
                   strips: int = 8) -> dict:
    out_dir = Path(out_dir)
    img_dir, rec_dir, strip_dir = out_dir / "images", out_dir / "agent", out_dir / "steps"
    for d in (img_dir, rec_dir, strip_dir):
        d.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data_dir)
    ids = list(ds["id"])
    todo = [i for i, sid in enumerate(ids) if not ((img_dir / f"{sid}.png").is_file() and (rec_dir / f"{sid}.json").is_file())]
    answer = pipeline_reads_answer(pipeline)  # only oracle arms see the scene graphs and the program
    bar = tqdm(total=len(todo), desc="agent edit", disable=not progress)
    for start in range(0, len(todo), batch_size):
        rows = ds.select(todo[start : start + batch_size])
        for i, row, res in zip(todo[start : start + batch_size], rows, pipeline.run([agent_request(r, answer) for r in rows])):
            if i < strips:  # source, each step, target: the plan made visible
                frames = [row["source_image"], *[s.image for s in res.steps if s.image is not None], row["target_image"]]
                save_png(image_grid([frames], scale=2), strip_dir / f"{row['id']}.png")
            save_png(res.images[0], img_dir / f"{row['id']}.png")
            atomic_write_json(rec_dir / f"{row['id']}.json", res.to_dict())
        bar.update(len(rows))
    bar.close()
    results = judge_folder(data_dir, img_dir, progress=progress)
    results["agent"] = summarise_agent(ds, rec_dir, results)
    results["model"] = {"decomposer": getattr(pipeline.decomposer, "name", "?"), "attempts": pipeline.attempts,
                        "check": getattr(pipeline.check, "name", None), "temperature": pipeline.temperature,
                        "plans": pipeline.plans, "plan_judge": getattr(pipeline.plan_judge, "name", None),
                        "repairs": getattr(pipeline, "repairs", 0)}
    cost = getattr(pipeline.editor, "cost", None)  # an earl editor counts its forwards (`PipelineEditor.cost`)
    if cost is not None and cost.images:
        results["generation"] = cost.to_dict()  # every editor call of this run, resampled steps included
    atomic_write_json(out_dir / "results.json", results)
    k = min(8, len(ds))
    grid = image_grid([[ds[i]["source_image"], ds[i]["target_image"], load_image(img_dir / f"{ids[i]}.png")]
                       for i in range(k)], col_labels=["source", "target", "output"], scale=2)
    save_png(grid, out_dir / "grid.png")
    return results


def summarise_agent(ds, rec_dir: Path, results: dict) -> dict:
    """Plan failures by kind, steps, plan F1 vs the ground truth, step pass rate, cost per edit; and
    each sample row of `results` gets its plan, step count and failure."""
    records = {sid: read_json(rec_dir / f"{sid}.json") for sid in ds["id"]}
    f1s, checked, passed = [], 0, 0
    for row, sample in zip(ds.select_columns(["id", "program", "source_scene"]), results["samples"]):
        rec = records[row["id"]]
        gold = program_plan(Scene.from_dict(json.loads(row["source_scene"])), EditProgram.from_dict(json.loads(row["program"])))
        plan = Plan.from_dict(rec["plan"]) if rec["plan"] else None
        f1s.append(plan_f1(plan, gold))
        for s in rec["steps"]:
            if s["passed"] is not None:
                checked, passed = checked + 1, passed + bool(s["passed"])
        sample.update({"plan": rec["plan"], "n_steps": rec["n_steps"], "agent_failure": rec["failure"],
                       "fallback": rec["fallback"], "editor_calls": rec["editor_calls"],
                       "check_calls": rec["check_calls"]})
    n = max(1, len(records))
    return {
        "plan_f1": sum(f1s) / n,
        "exact_plans": sum(f == 1.0 for f in f1s) / n,
        "step_pass_rate": passed / checked if checked else None,
        **summarise_records(list(records.values())),
    }


def format_agent(summary: dict) -> str:
    fails = ", ".join(f"{k} {v}" for k, v in sorted(summary["plan_failures"].items())) or "none"
    rate = summary["step_pass_rate"]
    return (f"plan F1 {summary['plan_f1']:.3f}, exact plans {summary['exact_plans']:.3f}, steps/edit "
            f"{summary['steps_per_edit']:.2f}, plan failures: {fails}; editor calls/edit "
            f"{summary['editor_calls_per_edit']:.2f}, check calls/edit {summary['check_calls_per_edit']:.2f}"
            + (f", steps passing their check {rate:.3f}" if rate is not None else "")
            + (f", plans tried/edit {summary['plans_tried_per_edit']:.2f}" if summary.get("plans_tried_per_edit", 1) > 1 else "")
            + (f", repairs kept/edit {summary['repairs_kept_per_edit']:.2f}" if summary.get("repairs_kept_per_edit") else ""))


def compare_runs(runs: dict[str, str | Path], base: str | None = None) -> dict:
    """Rows for a table of `earl eval shapes` runs on one test set: success with its Wilson 95% interval,
    per category, the agent's plan figures and cost, and each run's paired difference in success
    against `base` (same samples, 95% t-interval over per-sample differences), the reading that
    tells two arms apart on 200 samples where their own intervals overlap."""
    loaded = {label: read_json(Path(d) / "results.json") for label, d in runs.items()}
    for label, r in loaded.items():
        rows = r.get("samples") if isinstance(r, dict) else None
        if not rows or not isinstance(rows, list) or not all(isinstance(s, dict) and {"id", "success"} <= s.keys()
                                                             for s in rows):
            raise EarlError(f"{Path(runs[label]) / 'results.json'}: expected an `earl eval shapes` result "
                            "(a 'samples' list of rows with 'id' and 'success')")
    ids = {label: [s["id"] for s in r["samples"]] for label, r in loaded.items()}
    first = next(iter(ids.values()), [])
    for label, got in ids.items():
        if sorted(got) != sorted(first):
            raise EarlError(f"{runs[label]}: its samples are not those of {next(iter(runs.values()))} "
                            "(compare runs on the same test set)")
    if base is not None and base not in loaded:
        raise EarlError(f"--base {base!r} is not one of the runs ({', '.join(loaded)})")
    success = {label: {s["id"]: float(bool(s["success"])) for s in r["samples"]} for label, r in loaded.items()}
    rows = []
    for label, r in loaded.items():
        rate = proportion(success[label].values())
        n = rate.n
        agent = r.get("agent") or {}
        row = {"run": label, "n": n, "success": rate.rate, "success_ci": rate.ci,
               "per_category": {c: v["success"] for c, v in sorted(r.get("per_category", {}).items())},
               "plan_f1": agent.get("plan_f1"), "exact_plans": agent.get("exact_plans"),
               "editor_calls": agent.get("editor_calls_per_edit", 1.0), "check_calls": agent.get("check_calls_per_edit", 0.0)}
        if base is not None and label != base:
            diffs = [success[label][i] - success[base][i] for i in first]
            row["paired_diff"] = sum(diffs) / n
            row["paired_diff_ci"] = mean_ci(diffs)
        rows.append(row)
    return {"base": base, "rows": rows}


def format_comparison(table: dict) -> str:
    """Markdown: one row per run, success in %."""
    cats = sorted({c for row in table["rows"] for c in row["per_category"]})
    head = ["run", "n", "success % [95% CI]", *cats, "plan F1", "exact plans", "editor calls/edit", "check calls/edit"]
    if table["base"]:
        head.append(f"vs {table['base']} (paired, points)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    opt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    for row in table["rows"]:
        lo, hi = row["success_ci"]
        cells = [row["run"], str(row["n"]), f"{pct(row['success'])} [{pct(lo)}, {pct(hi)}]",
                 *(pct(row["per_category"][c]) if c in row["per_category"] else "" for c in cats),
                 opt(row["plan_f1"]), opt(row["exact_plans"]), f"{row['editor_calls']:.2f}", f"{row['check_calls']:.2f}"]
        if table["base"]:
            if "paired_diff" in row:
                a, b = row["paired_diff_ci"]
                cells.append(f"{100 * row['paired_diff']:+.1f} [{100 * a:+.1f}, {100 * b:+.1f}]")
            else:
                cells.append("(base)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
