"""The study's report: the markdown table (report.md) and the figures (success.png, curves.png)."""

from __future__ import annotations

from pathlib import Path

from earl.study.arms import StudyRecipe, arm_seeds, run_dir
from earl.viz import metric_points, moving_average, read_metrics, save_figure


def _fmt(x: dict, pct: bool = True) -> str:
    scale = 100 if pct else 1
    lo, hi = x["ci"]
    ci = "" if lo is None else f" [{lo * scale:.1f}, {hi * scale:.1f}]"
    return f"{x['mean'] * scale:.1f}{ci}"


def _across(entry: dict) -> str:
    return "test prompts" if entry["success"].get("across") == "prompts" else f"{len(entry['seeds'])} seeds"


def format_report(cfg: StudyRecipe, results: dict) -> str:
    sets = list(cfg.eval_sets)
    m = results["machine"]
    one_seed_each = all(len(arm_seeds(cfg, a)) == 1 for a in cfg.arms)
    spread = ("one seed; each cell: the mean [95% interval across the test prompts: Wilson for success, t for "
              "overall], in %" if one_seed_each else
              "each cell: the mean over an arm's seeds [95% t-interval across them], in %; an arm with one seed (a "
              "result no seed changes) has its interval across the test prompts (Wilson for success, t for overall)")
    lines = [f"Seeds {cfg.seeds}; {spread}. "
             f"Test sets: " + ", ".join(f"{k} = `{v}`" for k, v in cfg.eval_sets.items()) + ".",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
             f"finished {m['date']}; total stage time {results['total_time_s'] / 60:.1f} min."]
    kinds = {a.name: a for a in cfg.arms}
    train = results.get("training_min", {})
    for s in sets:
        rows = [(name, row[s]) for name, row in results["arms"].items() if s in row]
        lines += ["", f"**{s}** test set. Cost: editor and judge calls per test edit; training minutes per seed, the "
                  "arm's own and with what it starts from.", "",
                  "| arm | kind | success | overall (0-10) | interval across | editor calls | judge calls | "
                  "training min (own / total) | per seed (success) |", "|---|---|---:|---:|---|---:|---:|---:|---|"]
        for name, e in rows:
            a = kinds[name]
            kind = a.kind + (f" (start: {a.start})" if a.start else "") + (f" (`{a.model}`)" if a.model else "")
            t = train.get(name, {"own": 0.0, "total": 0.0})
            per_seed = ", ".join(f"{v * 100:.1f}" for v in e["success"]["per_seed"])
            lines.append(f"| {name} | {kind} | {_fmt(e['success'])} | {_fmt(e['overall'], pct=False)} | {_across(e)} | "
                         f"{e.get('editor_calls_per_edit', 1.0):.2f} | {e.get('judge_calls_per_edit', 0.0):.2f} | "
                         f"{t['own']:.1f} / {t['total']:.1f} | {per_seed} |")
    for name, row in results["arms"].items():
        first = next(iter(row.values()), {})
        if "mean_of_n_success" in first:
            a = kinds[name]
            lines += ["", f"`{name}`: the same {a.n} samples per prompt at temperature {a.temperature} without the "
                      "verifier's choice (mean success of the draws): "
                      + ", ".join(f"{s} {_fmt(row[s]['mean_of_n_success'])}" for s in row) + "."]
    if results["paired_differences"]:
        lines += ["", "Paired differences in success, percentage points: across seeds (each seed against the same "
                  "seed's baseline, or a one-seed baseline), or per prompt, same seed, when both arms have one seed:", "",
                  "| comparison | " + " | ".join(sets) + " | across |", "|---|" + "---:|" * len(sets) + "---|"]
        for name, diff in results["paired_differences"].items():
            first = next(iter(diff.values()))
            across = "prompts" if first.get("across") == "prompts" else f"{len(first['per_seed'])} seeds"
            lines.append(f"| {name} | " + " | ".join(_fmt(diff[s]) if s in diff else "" for s in sets)
                         + f" | {across} |")
    diag = results.get("grpo_diagnostics") or {}
    if diag:
        lines += ["", "GRPO diagnostics (means over seeds; first / last 10 steps of training). The rollout reward is "
                  "the arm's own verifier's; the oracle's verdict on the same rollouts (overall, 0-10) and the share of "
                  "oracle-ordered pairs in a group that the reward orders alike are logged when the verifier is not "
                  "the oracle: a reward that rises while the oracle's verdict does not is being hacked.", "",
                  "| arm | rollout reward | oracle on rollouts (0-10) | pair agreement with oracle | groups with zero "
                  "reward variance (of prompts/step) | sampled-code entropy (nats) | held-out success, first / last "
                  "eval | skipped updates | step time: rollout / reward / update (s) | rollout image tokens/s |",
                  "|---|---|---|---|---|---|---|---:|---|---:|"]
        for name, d in diag.items():
            def pair(k, fmt="{:.3f}", d=d):
                return f"{fmt.format(d[k + '_first'])} / {fmt.format(d[k + '_last'])}" if k + "_first" in d else "n/a"

            ev = (f"{d['eval_success_first']:.3f} / {d['eval_success_last']:.3f}" if "eval_success_first" in d
                  else "n/a")
            times = " / ".join(f"{d.get(k + '_s_mean', float('nan')):.2f}" for k in ("rollout", "reward", "update"))
            lines.append(f"| {name} | {pair('reward')} | {pair('oracle_overall', '{:.2f}')} | "
                         f"{pair('pair_agreement', '{:.2f}')} | {pair('zero_var_groups', '{:.1f}')} | {pair('entropy')} | "
                         f"{ev} | {d['skipped_updates']:.0%} | {times} | {d.get('image_tokens_per_s_mean', 0):.0f} |")
    for s in sets:
        arms = [name for name, row in results["arms"].items() if s in row]
        if not arms:
            continue
        first = results["arms"][arms[0]][s]
        lines += ["", f"Per category, {s} test set (success %, mean [95% CI], as above):", "",
                  "| category | n | " + " | ".join(arms) + " |", "|---|---:|" + "---:|" * len(arms)]
        for c in first["per_category"]:
            lines.append(f"| {c} | {first['category_n'][c]} | "
                         + " | ".join(_fmt(results["arms"][a][s]["per_category"][c]) for a in arms) + " |")
    return "\n".join(lines) + "\n"


def plot_success(results: dict, path: Path) -> None:
    """One panel per test set: each arm's success with its 95% interval (and its seeds as dots), arms in
    recipe order from the top, so the table's headline reads at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(s for row in results["arms"].values() for s in row))
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 0.45 * len(results["arms"]) + 1.5), squeeze=False)
    for ax, s in zip(axes[0], sets):
        names = [n for n, row in results["arms"].items() if s in row]
        for y, name in enumerate(names):
            e = results["arms"][name][s]["success"]
            lo, hi = e["ci"]
            ax.barh(y, 100 * e["mean"], color="tab:blue", alpha=0.6)
            if lo is not None:
                ax.errorbar(100 * e["mean"], y, xerr=[[100 * (e["mean"] - lo)], [100 * (hi - e["mean"])]],
                            color="black", capsize=3)
            if len(e["per_seed"]) > 1:
                ax.plot([100 * v for v in e["per_seed"]], [y] * len(e["per_seed"]), "o", color="tab:orange", ms=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set(xlim=(0, 100), xlabel="success % (95% CI; dots: seeds)", title=f"{s} test set")
        ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def plot_curves(cfg: StudyRecipe, path: Path) -> None:
    """GRPO rollout reward (moving average; dashed: the oracle on the same rollouts, where logged), held-out
    oracle success during GRPO, and during SFT when the study trains any; one colour per arm, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_sft = any(a.kind == "sft" for a in cfg.arms)  # a study of given editors has no SFT curves to draw
    fig, axes = plt.subplots(1, 3 if has_sft else 2, figsize=(15 if has_sft else 10, 4))
    ax_r, ax_g, ax_s = (*axes, None) if not has_sft else axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(a for a in cfg.arms if a.kind in ("sft", "grpo")):
        color = colors[i % len(colors)]
        for j, seed in enumerate(arm_seeds(cfg, arm)):
            log = run_dir(cfg, arm.name, seed) / "metrics.jsonl"
            if not log.is_file():
                continue
            rows = read_metrics(log)
            label = arm.name if j == 0 else None
            ev = metric_points(rows, "eval/success")
            if ev:
                (ax_g if arm.kind == "grpo" else ax_s).plot(*zip(*ev), marker="o", color=color, alpha=0.8, label=label)
            for key, scale, style in (("reward/mean", 1.0, "-"), ("monitor/oracle_overall", 0.1, "--")):
                rew = [(step, v * scale) for step, v in metric_points(rows, key)]
                if rew:
                    ax_r.plot(*zip(*moving_average(rew, len(rew) // 20)), style, color=color, alpha=0.8,
                              label=label if style == "-" else None)
    ax_r.set(title="GRPO: own reward (solid), oracle on the same rollouts (dashed)", xlabel="GRPO step",
             ylabel="reward / oracle overall (0-1), moving avg")
    ax_g.set(title="GRPO: held-out success (greedy)", xlabel="GRPO step", ylabel="success")
    if ax_s is not None:
        ax_s.set(title="SFT: held-out success (greedy)", xlabel="SFT step", ylabel="success")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
