"""The recipe study: `earl study recipes/shapes/study_complex.yaml`.

Trains and evaluates several arms over several seeds on ShapesEdit, with one shared image tokenizer,
and reports each arm as mean +- 95% CI across its seeds (across test prompts for an arm with one seed).
Arm kinds:
    given       an editor from a directory, evaluated as is; a start for other arms
    sft         SFT from scratch, or continued from an editor arm (`start`)
    grpo        GRPO from an editor arm, rewarded by its recipe's verifier or a `scalar_rm` arm's model
    best_of_n   N samples per prompt from an editor arm, the oracle keeping the best: the control that
                tells a gain from the verifier at test time apart from a gain in the policy
    agent       the agent pipeline (decomposer -> editor of an editor arm), with its step checks and
                sampled-plan choice (`earl.agents.build.AgentOptions`)
    scalar_rm   a Bradley-Terry reward model trained inside the study, for GRPO arms to use
Each evaluated edit records its editor and judge calls, and each stage its wall time: the report's cost.

Resumable at every level: a finished stage (a trained model, an evaluation file) is never redone,
and an interrupted training resumes from its last checkpoint. Layout of `out_dir`:

    {arm}/seed_{s}/            a training run (its model/, metrics.jsonl, checkpoints/)
    {arm}/seed_{s}/eval_{set}.json   per-sample oracle verdicts (and calls) on one test set
    {arm}/seed_{s}/agent_{set}/      an agent arm's images and per-edit records (plans, steps)
    stage_times.json           wall time of every finished stage (sums across resumed runs)
    results.json, report.md, curves.png, success.png   the aggregate, rewritten at the end of every run
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from earl.agents.build import GROUND_TRUTH, AgentOptions, build_agent_pipeline
from earl.agents.evaluate import run_agent_eval
from earl.config import load_config, to_dict
from earl.data import encode_dataset, resolve_source
from earl.errors import ConfigError
from earl.evaluate import generate_in_batches, oracle_scores
from earl.generate import SamplingConfig
from earl.io import atomic_write_json, atomic_write_text, read_json
from earl.model import UnifiedEditor
from earl.shapes.edits import SPLITS
from earl.stats import json_interval, mean_ci, proportion
from earl.train.grpo import GRPORecipe, train_grpo
from earl.train.scalar_rm import ScalarRecipe, train_scalar_rm
from earl.train.sft import SFTRecipe, train_sft
from earl.viz import metric_points, moving_average, read_metrics, save_figure

ARM_KINDS = ("given", "sft", "grpo", "best_of_n", "agent", "scalar_rm")
TRAINED_KINDS = ("sft", "grpo", "scalar_rm")  # arms with a training stage
EDITOR_KINDS = ("given", "sft", "grpo")  # arms that hold an editor another arm can start from


@dataclass
class ArmSection:
    name: str  # a directory name and a table row, e.g. "sft_simple"
    kind: str  # one of ARM_KINDS
    recipe: str | None = None  # the stage's YAML (sft, grpo, scalar_rm)
    model: str | None = None  # given: an editor directory (the same for every seed), never trained
    overrides: list[str] = field(default_factory=list)  # key=value, applied after the study's defaults
    # grpo, best_of_n, agent: the arm whose editor (same seed) they start from or use; sft, scalar_rm:
    # an optional editor arm to continue from (model.init_from / init_from)
    start: str | None = None
    n: int = 8  # best_of_n: samples per prompt
    temperature: float = 1.0  # best_of_n: sampling temperature of the N samples
    # This arm's seeds (default: the study's). One seed for an arm whose result no seed changes (a given
    # editor, greedy decoding, a greedy agent): its intervals are then across test prompts, not seeds.
    seeds: list[int] | None = None
    sets: list[str] | None = None  # the eval sets this arm is evaluated on (default: all of the study's)
    reward_model: str | None = None  # grpo: a scalar_rm arm whose model is the reward (verifier "scalar")
    decomposer: str | None = None  # agent: a decomposer directory, or "ground-truth"; None: the bundled one
    agent: AgentOptions = field(default_factory=AgentOptions)  # agent: step check, sampled plans, plan judge

    def __post_init__(self):
        if self.kind not in ARM_KINDS:
            raise ValueError(f"arm {self.name!r}: kind must be one of {', '.join(ARM_KINDS)}, got {self.kind!r}")
        if (self.kind == "given") != (self.model is not None):
            raise ValueError(f"arm {self.name!r}: `model` (an editor directory) is for, and needed by, a given arm")
        if self.kind in TRAINED_KINDS and not self.recipe:
            raise ValueError(f"arm {self.name!r}: a {self.kind} arm needs a recipe")
        if self.kind in ("grpo", "best_of_n", "agent") and not self.start:
            raise ValueError(f"arm {self.name!r}: a {self.kind} arm needs `start` (an editor arm's name)")
        if self.kind == "best_of_n" and (self.n < 2 or self.temperature <= 0):
            raise ValueError(f"arm {self.name!r}: best_of_n needs n >= 2 and temperature > 0")
        if self.reward_model is not None and self.kind != "grpo":
            raise ValueError(f"arm {self.name!r}: `reward_model` is for grpo arms")
        if self.kind != "agent" and (self.decomposer is not None or self.agent != AgentOptions()):
            raise ValueError(f"arm {self.name!r}: `decomposer` and `agent` are for agent arms")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"arm {self.name!r}: seeds must be a non-empty list of distinct integers")


@dataclass
class StudyRecipe:
    out_dir: str = "runs/study"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    image_tokenizer: str = "checkpoints/shapes-editor/image_tokenizer"  # shared by every arm
    cache_dir: str = "runs/cache"
    eval_sets: dict[str, str] = field(default_factory=lambda: {"simple": "shapes:simple:test:200",
                                                               "complex": "shapes:complex:test:200"})
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    eval_batch_size: int = 64
    sft_overrides: list[str] = field(default_factory=list)  # applied to every sft arm
    grpo_overrides: list[str] = field(default_factory=list)  # applied to every grpo arm
    compare: list[list[str]] = field(default_factory=list)  # [arm, baseline] pairs reported as paired differences
    arms: list[ArmSection] = field(default_factory=list)

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        if not self.eval_sets:
            raise ValueError("eval_sets: at least one test set is needed")
        seen: dict[str, ArmSection] = {}
        for arm in self.arms:
            if arm.name in seen:
                raise ValueError(f"arms: the name {arm.name!r} is used twice")
            unknown = [s for s in arm.sets or [] if s not in self.eval_sets]
            if unknown:
                raise ValueError(f"arm {arm.name!r}: sets {unknown} are not among eval_sets ({', '.join(self.eval_sets)})")
            for key, ref, kinds, what in (("start", arm.start, EDITOR_KINDS, "an editor arm (given, sft or grpo)"),
                                          ("reward_model", arm.reward_model, ("scalar_rm",), "a scalar_rm arm")):
                if ref is None:
                    continue
                if ref not in seen:
                    raise ValueError(f"arm {arm.name!r}: {key} {ref!r} must name an earlier arm")
                if seen[ref].kind not in kinds:
                    raise ValueError(f"arm {arm.name!r}: {key} {ref!r} is a {seen[ref].kind} arm; expected {what}")
                theirs = arm_seeds(self, seen[ref])
                if len(theirs) > 1 and not set(arm_seeds(self, arm)) <= set(theirs):
                    raise ValueError(f"arm {arm.name!r}: its seeds {arm_seeds(self, arm)} are not all among "
                                     f"{ref!r}'s {theirs}")
            seen[arm.name] = arm
        for pair in self.compare:
            if len(pair) != 2 or any(a not in seen for a in pair):
                raise ValueError(f"compare: each entry must be [arm, baseline] with known arm names, got {pair}")
            if any(seen[a].kind == "scalar_rm" for a in pair):
                raise ValueError(f"compare {pair}: a scalar_rm arm is a reward model, not an editor; it has no results")
            a, b = (arm_seeds(self, seen[x]) for x in pair)
            if len(a) > 1 and len(b) > 1 and a != b:
                raise ValueError(f"compare {pair}: the two arms have different seeds ({a} and {b})")
            sa, sb = (set(arm_sets(self, seen[x])) for x in pair)
            if not sa & sb:
                raise ValueError(f"compare {pair}: the two arms share no eval set")


def arm_seeds(cfg: StudyRecipe, arm: ArmSection) -> list[int]:
    return list(arm.seeds) if arm.seeds is not None else list(cfg.seeds)


def arm_sets(cfg: StudyRecipe, arm: ArmSection) -> list[str]:
    """The eval sets an arm is evaluated on (none for a reward model), in the study's order."""
    if arm.kind == "scalar_rm":
        return []
    return [s for s in cfg.eval_sets if arm.sets is None or s in arm.sets]


def select_arms(cfg: StudyRecipe, names: list[str]) -> StudyRecipe:
    """The study restricted to `names` and the arms they start from (e.g. to re-run one arm elsewhere);
    comparisons among the kept arms stay."""
    by_name = {a.name: a for a in cfg.arms}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--arms: no arm named {', '.join(unknown)} (arms: {', '.join(by_name)})")
    keep = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        a = by_name[name]
        todo += [r for r in (a.start, a.reward_model) if r]
    return replace(cfg, arms=[a for a in cfg.arms if a.name in keep],
                               compare=[p for p in cfg.compare if set(p) <= keep])


# ---- one stage at a time ------------------------------------------------------------------------
class StageTimes:
    """Wall time per finished stage, kept on disk so a resumed study reports its whole cost."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = read_json(path) if path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.times[stage] = round(self.times.get(stage, 0.0) + seconds, 1)
        atomic_write_json(self.path, self.times)


def run_dir(cfg: StudyRecipe, arm: str, seed: int) -> Path:
    return Path(cfg.out_dir) / arm / f"seed_{seed}"


def _arm(cfg: StudyRecipe, name: str) -> ArmSection:
    return next(a for a in cfg.arms if a.name == name)


def _their_seed(cfg: StudyRecipe, other: ArmSection, seed: int) -> int:
    """The seed of `other` (a start or a reward model) that an arm's `seed` uses: the same one, or the
    other arm's only seed when it has one (a given editor, a reward model trained once)."""
    theirs = arm_seeds(cfg, other)
    return seed if seed in theirs else theirs[0]


def model_dir(cfg: StudyRecipe, arm: ArmSection, seed: int) -> Path:
    """Where an arm's model for one seed lives: its training run's model/, or a given arm's directory."""
    return Path(arm.model) if arm.kind == "given" else run_dir(cfg, arm.name, _their_seed(cfg, arm, seed)) / "model"


def _trained(d: Path, kind: str) -> bool:
    done = (d / "model" / "editor.json") if kind != "scalar_rm" else (d / "model")
    return (d / "final_metrics.json").is_file() and done.exists()


def arm_recipe(cfg: StudyRecipe, arm: ArmSection, seed: int):
    """(train function, recipe) of one trained (arm, seed): the stage YAML, then the study's defaults for
    that kind, then the arm's overrides, then the study's own fields (output, seed, start model)."""
    out = run_dir(cfg, arm.name, seed)
    start = model_dir(cfg, _arm(cfg, arm.start), seed) if arm.start else None
    if arm.kind == "sft":
        base = [f"model.image_tokenizer={cfg.image_tokenizer}", f"data.cache_dir={cfg.cache_dir}"]
        tail = [f"out_dir={out}", f"run.seed={seed}"] + ([f"model.init_from={start}"] if start else [])
        return train_sft, load_config(SFTRecipe, arm.recipe, base + cfg.sft_overrides + arm.overrides + tail)
    if arm.kind == "scalar_rm":
        tail = [f"out_dir={out}", f"run.seed={seed}"] + ([f"init_from={start}"] if start else [])
        return train_scalar_rm, load_config(ScalarRecipe, arm.recipe, arm.overrides + tail)
    reward = []
    if arm.reward_model:
        rm = model_dir(cfg, _arm(cfg, arm.reward_model), seed)
        reward = ["verifier.name=scalar", f"verifier.options={{model_path: {rm}}}"]
    return train_grpo, load_config(GRPORecipe, arm.recipe, [f"data.cache_dir={cfg.cache_dir}"] + cfg.grpo_overrides
                                   + arm.overrides + reward + [f"out_dir={out}", f"run.seed={seed}", f"init_from={start}"])


def check_recipes(cfg: StudyRecipe) -> None:
    """Load every arm's stage recipe now, so a typo in the last arm fails before hours of training."""
    for arm in cfg.arms:
        if arm.kind == "given":
            if not (Path(arm.model) / "editor.json").is_file():
                raise ConfigError(f"arm {arm.name!r}: model {arm.model} is not a saved editor (no editor.json)")
            continue
        if arm.kind == "agent":
            if arm.decomposer not in (None, GROUND_TRUTH) and not Path(arm.decomposer).is_dir():
                raise ConfigError(f"arm {arm.name!r}: decomposer {arm.decomposer} is not a directory (a saved "
                                  "decomposer, or 'ground-truth')")
            continue
        if arm.kind == "best_of_n":
            continue
        try:
            arm_recipe(cfg, arm, arm_seeds(cfg, arm)[0])
        except ConfigError as e:
            raise ConfigError(f"arm {arm.name!r}: {e}") from None


def train_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, progress: bool) -> None:
    """Train one (arm, seed); an interrupted run resumes from its last checkpoint."""
    train, recipe = arm_recipe(cfg, arm, seed)
    train(recipe, resume=True, progress=progress)


def _eval_set(cfg: StudyRecipe, source: str, editor):
    cache = Path(cfg.cache_dir)
    return encode_dataset(resolve_source(source, cache, editor.config.image_size), editor.image_tokenizer,
                          Path(cfg.image_tokenizer), cache, progress=False)


def evaluate_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """Per-sample oracle verdicts of one (arm, seed) on one test set, with the editor and judge calls each
    edit cost; best-of-N keeps the best of N samples, an agent arm runs the whole pipeline."""
    if arm.kind == "agent":
        return evaluate_agent_arm(cfg, arm, seed, set_name, progress)
    model_arm = _arm(cfg, arm.start) if arm.kind == "best_of_n" else arm
    editor = UnifiedEditor.from_pretrained(model_dir(cfg, model_arm, seed))
    data = _eval_set(cfg, cfg.eval_sets[set_name], editor)
    n = 1
    sampling = cfg.eval_sampling
    if arm.kind == "best_of_n":
        n = arm.n
        sampling = SamplingConfig(temperature=arm.temperature, guidance_scale=cfg.eval_sampling.guidance_scale)
    rows = [i for i in range(len(data)) for _ in range(n)]  # prompt-major: N samples of a prompt are adjacent
    out = generate_in_batches(editor, [data.instructions[i] for i in rows], data.source_codes[rows], sampling,
                              batch_size=cfg.eval_batch_size, seed=seed, progress=progress)
    verdicts = oracle_scores(editor.decode_codes(out.codes), [data.source_scenes[i] for i in rows],
                             [data.target_scenes[i] for i in rows], [data.instructions[i] for i in rows])
    samples = []
    for p in range(len(data)):
        group = verdicts[p * n : (p + 1) * n]
        best = max(range(n), key=lambda g: group[g]["overall"])  # first of the ties
        v = group[best]
        row = {"id": data.ids[p], "category": data.categories[p], "success": bool(v["success"]),
               "sc": v["sc"], "pq": v["pq"], "overall": v["overall"], "editor_calls": n,
               "judge_calls": n if n > 1 else 0}
        if n > 1:  # the unselected draws: what sampling at this temperature gives without a verifier
            row["mean_of_n"] = {k: sum(float(g[k]) for g in group) / n for k in ("success", "overall")}
        samples.append(row)
    return {"arm": arm.name, "seed": seed, "set": set_name, "n_samples_per_prompt": n,
            "sampling": to_dict(sampling), "samples": samples}


def evaluate_agent_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """The agent pipeline (decomposer -> editor of the `start` arm, same seed) on one test set, through
    `earl eval shapes --agent`'s runner (its images and per-edit records kept under agent_{set}/, and
    resumed sample by sample). Judge calls count the step checks and the plan judge's verdicts."""
    editor_dir = model_dir(cfg, _arm(cfg, arm.start), seed)
    image_size = read_json(editor_dir / "editor.json")["image_size"]
    data_dir = resolve_source(cfg.eval_sets[set_name], Path(cfg.cache_dir), image_size)
    pipe = build_agent_pipeline(arm.decomposer, str(editor_dir), arm.agent, seed=seed)
    res = run_agent_eval(pipe, data_dir, run_dir(cfg, arm.name, seed) / f"agent_{set_name}",
                         batch_size=cfg.eval_batch_size, progress=progress)
    samples = [{"id": r["id"], "category": r["category"], "success": bool(r["success"]), "sc": r["sc"],
                "pq": r["pq"], "overall": r["overall"], "editor_calls": r["editor_calls"],
                "judge_calls": r["check_calls"], "plan": r["plan"], "agent_failure": r["agent_failure"]}
               for r in res["samples"]]
    return {"arm": arm.name, "seed": seed, "set": set_name, "agent": res["agent"], "model": res["model"],
            "samples": samples}


def run_study(cfg: StudyRecipe, progress: bool = True) -> dict:
    """Every (arm, seed) trained and evaluated, in recipe order; returns the aggregate (also written to disk)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.image_tokenizer).is_dir():
        raise ConfigError(f"image_tokenizer: {cfg.image_tokenizer} not found (expected a tokenizer directory, "
                          "e.g. checkpoints/shapes-editor/image_tokenizer)")
    check_recipes(cfg)
    atomic_write_json(out / "study.json", to_dict(cfg))
    times = StageTimes(out / "stage_times.json")
    seeds = list(dict.fromkeys([*cfg.seeds, *(s for a in cfg.arms for s in arm_seeds(cfg, a))]))
    # seed-major: seed 0 of every arm first, so an interrupted study has every arm's first seed
    stages = [(arm, seed) for seed in seeds for arm in cfg.arms if seed in arm_seeds(cfg, arm)]
    for arm, seed in tqdm(stages, desc="study", disable=not progress):
        d = run_dir(cfg, arm.name, seed)
        if arm.kind in TRAINED_KINDS and not _trained(d, arm.kind):
            t0 = time.time()
            train_arm(cfg, arm, seed, progress)
            times.record(f"{arm.name}/seed_{seed}/train", time.time() - t0)
        for set_name in arm_sets(cfg, arm):
            path = d / f"eval_{set_name}.json"
            if path.is_file():
                continue
            t0 = time.time()
            atomic_write_json(path, evaluate_arm(cfg, arm, seed, set_name, progress))
            times.record(f"{arm.name}/seed_{seed}/eval_{set_name}", time.time() - t0)
    results = aggregate(cfg, times.times)
    results["stage_times_s"] = times.times
    results["total_time_s"] = round(sum(times.times.values()), 1)
    results["machine"] = machine_description()
    atomic_write_json(out / "results.json", results)
    plot_curves(cfg, out / "curves.png")
    plot_success(results, out / "success.png")
    atomic_write_text(out / "report.md", format_report(cfg, results))
    return results


# ---- aggregate ---------------------------------------------------------------------------------
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
        if arm.kind == "scalar_rm":
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


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ---- report ------------------------------------------------------------------------------------
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
