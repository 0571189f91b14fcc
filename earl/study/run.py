"""Running a study: every (arm, seed) trained and evaluated in recipe order, each finished stage kept and timed,
then the aggregate, the report and the figures written."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from earl.config import to_dict
from earl.errors import ConfigError
from earl.io import atomic_write_json, atomic_write_text, read_json
from earl.study.aggregate import aggregate
from earl.study.arms import (
    ARM_KINDS,
    ArmSection,
    StudyRecipe,
    arm_recipe,
    arm_seeds,
    arm_sets,
    evaluate_arm,
    is_trained,
    run_dir,
)
from earl.study.report import format_report, plot_curves, plot_success


class StageTimes:
    """Wall time per finished stage, kept on disk so a resumed study reports its whole cost."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = read_json(path) if path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.times[stage] = round(self.times.get(stage, 0.0) + seconds, 1)
        atomic_write_json(self.path, self.times)


def check_recipes(cfg: StudyRecipe) -> None:
    """Check every arm before any work: what its kind requires, and its stage recipe loaded now, so that a typo
    in the last arm fails before hours of training."""
    for arm in cfg.arms:
        kind = ARM_KINDS[arm.kind]
        if kind.check is not None:
            kind.check(arm)
        if kind.stage is None:
            continue
        try:
            arm_recipe(cfg, arm, arm_seeds(cfg, arm)[0])
        except ConfigError as e:
            raise ConfigError(f"arm {arm.name!r}: {e}") from None


def train_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, progress: bool) -> None:
    """Train one (arm, seed); an interrupted run resumes from its last checkpoint."""
    train, recipe = arm_recipe(cfg, arm, seed)
    train(recipe, resume=True, progress=progress)


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
        if ARM_KINDS[arm.kind].stage is not None and not is_trained(cfg, arm, seed):
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
