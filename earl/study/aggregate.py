"""The study's aggregate: each arm's success and overall score with 95% intervals, per test set and category,
paired differences between arms, GRPO diagnostics from the training logs, and training minutes."""

from __future__ import annotations

import math

from earl.errors import ConfigError
from earl.io import read_json
from earl.shapes.edits import SPLITS
from earl.stats import json_interval, mean_ci, proportion
from earl.study.arms import ARM_KINDS, StudyRecipe, arm_seeds, arm_sets, run_dir
from earl.viz import metric_points, read_metrics


def _seed_ci(values: list[float], bounds: tuple[float, float]) -> dict:
    mean = sum(values) / len(values)
    return {"mean": mean, "ci": json_interval(mean_ci(values, bounds=bounds)), "per_seed": values}


def _prompt_ci(rows: list[dict], key: str, bounds: tuple[float, float]) -> dict:
    """One seed: the 95% interval across test prompts (Wilson for success, t for the 0-10 overall)."""
    if key == "success":
        success = proportion(r[key] for r in rows)
        return {"mean": success.rate, "ci": list(success.ci), "per_seed": [success.rate], "across": "prompts"}
    values = [float(r[key]) for r in rows]
    return {"mean": sum(values) / len(values), "ci": list(mean_ci(values, bounds=bounds)),
            "per_seed": [sum(values) / len(values)], "across": "prompts"}


def aggregate(cfg: StudyRecipe, times: dict[str, float] | None = None) -> dict:
    """Mean +- 95% t-interval across an arm's seeds, per test set, overall and per category. An arm with one
    seed has no spread across seeds: its intervals are then across test prompts (`"across": "prompts"`).
    Paired differences: across seeds when either arm has several (a one-seed arm pairs with each of the
    other's), per prompt when both have one (both arms answered the same prompts). `times` (stage wall
    times) adds each arm's training minutes to its cost."""
    table: dict = {}
    for arm in cfg.arms:
        if ARM_KINDS[arm.kind].rewards:  # a reward model has no results of its own
            continue
        seeds = arm_seeds(cfg, arm)
        table[arm.name] = {}
        for set_name in arm_sets(cfg, arm):
            runs = [read_json(run_dir(cfg, arm.name, s) / f"eval_{set_name}.json")["samples"] for s in seeds]
            if len(seeds) == 1:
                entry = {"success": _prompt_ci(runs[0], "success", (0.0, 1.0)),
                         "overall": _prompt_ci(runs[0], "overall", (0.0, 10.0)), "n_per_seed": len(runs[0])}
            else:
                entry = {"success": _seed_ci([_mean(r, "success") for r in runs], (0.0, 1.0)),
                         "overall": _seed_ci([_mean(r, "overall") for r in runs], (0.0, 10.0)),
                         "n_per_seed": len(runs[0])}
            entry["seeds"] = seeds
            if runs[0] and "mean_of_n" in runs[0][0]:
                entry["mean_of_n_success"] = _seed_ci(
                    [sum(x["mean_of_n"]["success"] for x in r) / len(r) for r in runs], (0.0, 1.0))
            for key in ("editor_calls", "judge_calls"):  # the cost of one test edit, mean over seeds
                if runs[0] and key in runs[0][0]:
                    entry[f"{key}_per_edit"] = sum(_mean(r, key) for r in runs) / len(runs)
            order = [c for split in SPLITS.values() for c in split]
            categories = sorted({x["category"] for x in runs[0]}, key=lambda c: order.index(c) if c in order else 99)
            entry["category_n"] = {c: sum(x["category"] == c for x in runs[0]) for c in categories}
            by_cat = {c: [[x for x in r if x["category"] == c] for r in runs] for c in categories}
            entry["per_category"] = {  # one seed: Wilson over the category's prompts, as for the whole set
                c: (_seed_ci([_mean(rows, "success") for rows in per_run], (0.0, 1.0)) if len(seeds) > 1
                    else _prompt_ci(per_run[0], "success", (0.0, 1.0))) for c, per_run in by_cat.items()}
            table[arm.name][set_name] = entry
    paired = {}
    by_name = {a.name: a for a in cfg.arms}
    for arm, base in cfg.compare:
        sa, sb = arm_seeds(cfg, by_name[arm]), arm_seeds(cfg, by_name[base])
        sets = [s for s in arm_sets(cfg, by_name[arm]) if s in arm_sets(cfg, by_name[base])]
        if len(sa) == 1 and len(sb) == 1:
            paired[f"{arm} - {base}"] = {s: _paired_per_prompt(cfg, arm, sa[0], base, sb[0], s) for s in sets}
            continue
        per = {}
        for s in sets:
            a, b = table[arm][s]["success"]["per_seed"], table[base][s]["success"]["per_seed"]
            if len(a) == 1:
                a = a * len(b)
            if len(b) == 1:
                b = b * len(a)
            per[s] = _seed_ci([x - y for x, y in zip(a, b)], (-1.0, 1.0))
        paired[f"{arm} - {base}"] = per
    return {"seeds": cfg.seeds, "arms": table, "paired_differences": paired,
            "grpo_diagnostics": grpo_diagnostics(cfg), "training_min": training_minutes(cfg, times or {})}


def training_minutes(cfg: StudyRecipe, times: dict[str, float]) -> dict:
    """Per arm: its own training wall time (minutes, mean over seeds) and with everything it was built on
    (its start's and its reward model's, recursively), from the stage times."""
    own = {}
    for arm in cfg.arms:
        per_seed = [times[k] for s in arm_seeds(cfg, arm) if (k := f"{arm.name}/seed_{s}/train") in times]
        own[arm.name] = sum(per_seed) / len(per_seed) / 60 if per_seed else 0.0
    total = {}
    for arm in cfg.arms:  # recipe order: what an arm builds on comes first
        total[arm.name] = own[arm.name] + sum(total[r] for r in (arm.start, arm.reward_model) if r)
    return {name: {"own": own[name], "total": total[name]} for name in own}


def _paired_per_prompt(cfg: StudyRecipe, arm: str, arm_seed: int, base: str, base_seed: int, set_name: str) -> dict:
    """Success of `arm` minus `base` prompt by prompt (one seed each), mean and 95% t-interval across prompts."""
    a = read_json(run_dir(cfg, arm, arm_seed) / f"eval_{set_name}.json")["samples"]
    b = read_json(run_dir(cfg, base, base_seed) / f"eval_{set_name}.json")["samples"]
    if [x["id"] for x in a] != [x["id"] for x in b]:
        raise ConfigError(f"compare [{arm}, {base}]: their {set_name} evaluations are on different prompts")
    diffs = [float(x["success"]) - float(y["success"]) for x, y in zip(a, b)]
    lo, hi = mean_ci(diffs, bounds=(-1.0, 1.0))
    return {"mean": sum(diffs) / len(diffs), "ci": [lo, hi], "per_seed": [sum(diffs) / len(diffs)], "across": "prompts"}


def grpo_diagnostics(cfg: StudyRecipe, window: int = 10) -> dict:
    """What the GRPO logs say about why RL did or did not move: per arm, means over seeds of the first
    and last `window` steps (rollout reward, groups with no reward variance, sampled-token entropy),
    the held-out success at the first and last evaluation, and the step time split."""
    out = {}
    keys = {"reward": "reward/mean", "zero_var_groups": "reward/zero_variance_groups",
            "entropy": "policy/entropy_mc", "rollout_s": "time/rollout_s", "reward_s": "time/reward_s",
            "update_s": "time/update_s", "image_tokens_per_s": "rollout/image_tokens_per_s",
            "oracle_overall": "monitor/oracle_overall", "pair_agreement": "monitor/pair_agreement"}
    for arm in (a for a in cfg.arms if a.kind == "grpo"):
        per_seed = []
        for seed in arm_seeds(cfg, arm):
            log = run_dir(cfg, arm.name, seed) / "metrics.jsonl"
            if not log.is_file():
                continue
            rows = read_metrics(log)
            # a step whose every reward failed to parse logs reward/mean NaN: it is still a step
            n_steps = len({r["step"] for r in rows if "reward/mean" in r})
            if not n_steps:
                continue
            d = {}
            for name, key in keys.items():
                vals = [v for _, v in metric_points(rows, key)]
                if vals:
                    d[f"{name}_first"] = sum(vals[:window]) / len(vals[:window])
                    d[f"{name}_last"] = sum(vals[-window:]) / len(vals[-window:])
                    d[f"{name}_mean"] = sum(vals) / len(vals)
            d["skipped_updates"] = sum(v for _, v in metric_points(rows, "update/skipped")) / n_steps
            evals = metric_points(rows, "eval/success")
            if evals:
                d["eval_success_first"], d["eval_success_last"] = evals[0][1], evals[-1][1]
            per_seed.append(d)
        if per_seed:
            names = set.intersection(*(set(d) for d in per_seed))
            out[arm.name] = {k: sum(d[k] for d in per_seed) / len(per_seed) for k in sorted(names)}
    return out


def _mean(rows: list[dict], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows) if rows else math.nan
