"""Judging a folder of edited images against a ShapesEdit dataset (`earl judge shapes`).

The contract with whatever produced the images: one PNG per sample, named `{id}.png`, in one
folder. A missing or unreadable image is a failed sample (every score 0), listed by id, never a
crash: a model that emits garbage for 3% of prompts should score 3% lower, not abort the run.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from earl.errors import DataError
from earl.shapes.dataset import iter_samples
from earl.shapes.edits import SPLITS, Sample
from earl.shapes.oracle import judge
from earl.stats import json_interval, mean_ci, proportion

SCORES = ("sc", "pq", "overall")


def summarize(results: list[dict]) -> dict:
    """Success rate and mean scores with 95% intervals (Wilson for success, Student t for means)."""
    n = len(results)
    success = proportion(r["success"] for r in results)
    out: dict = {"n": n, "success": success.rate if n else 0.0, "success_ci": json_interval(success.ci)}
    for key in SCORES:
        values = [r[key] for r in results]
        out[key] = sum(values) / n if n else 0.0
        out[f"{key}_ci"] = json_interval(mean_ci(values, bounds=(0.0, 10.0)))
    return out


def _failed(sample: Sample, error: str) -> dict:
    return {"id": sample.id, "category": sample.category, "instruction": sample.instruction, "success": False,
            "sc": 0.0, "pq": 0.0, "overall": 0.0, "principles": [], "error": error}


def judge_sample(sample: Sample, image_path: Path) -> dict:
    """One sample's result row; a missing or unreadable image gives a failed row with `error` set."""
    if not image_path.is_file():
        return _failed(sample, f"missing: {image_path} not found")
    try:
        j = judge(sample.source_scene, sample.target_scene, image_path, sample.instruction)
    except DataError as e:
        return _failed(sample, str(e))
    return {"id": sample.id, "category": sample.category, "instruction": sample.instruction, "success": j.success,
            "sc": j.sc, "pq": j.pq, "overall": j.overall, "principles": j.to_dict()["principles"], "error": None}


def judge_folder(data_dir: str | Path, images_dir: str | Path, progress: bool = True) -> dict:
    """Judge `images_dir/{id}.png` for every sample of the dataset in `data_dir`.

    Returns {"overall": summary, "per_category": {category: summary}, "missing": [ids],
    "unreadable": [{"id", "reason"}], "samples": [rows]}; a summary holds n, success (fraction of
    samples whose principles all pass), the mean sc/pq/overall (0-10), and a 95% interval for each.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found (expected one {{id}}.png per sample)")
    samples = list(iter_samples(data_dir))
    rows = [judge_sample(s, images_dir / f"{s.id}.png") for s in tqdm(samples, desc="judging", disable=not progress)]
    order = [c for split in SPLITS.values() for c in split]
    categories = sorted({r["category"] for r in rows}, key=lambda c: order.index(c) if c in order else len(order))
    failed = [r for r in rows if r["error"] is not None]
    missing = [r["id"] for r in failed if r["error"].startswith("missing:")]
    unreadable = [{"id": r["id"], "reason": r["error"]} for r in failed if not r["error"].startswith("missing:")]
    return {
        "overall": summarize(rows),
        "per_category": {c: summarize([r for r in rows if r["category"] == c]) for c in categories},
        "missing": missing,
        "unreadable": unreadable,
        "samples": rows,
    }


def format_table(results: dict) -> str:
    """A markdown table of a `judge_folder` result: one row per category, then all samples."""

    def ci(bounds) -> str:
        return "n/a" if bounds[0] is None else f"{bounds[0]:.2f}-{bounds[1]:.2f}"

    lines = ["| category | n | success | success 95% CI | SC | PQ | overall | overall 95% CI |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [*results["per_category"].items(), ("all", results["overall"])]
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {s['success']:.3f} | {ci(s['success_ci'])} | {s['sc']:.2f} | {s['pq']:.2f} "
                     f"| {s['overall']:.2f} | {ci(s['overall_ci'])} |")
    if results["missing"] or results["unreadable"]:
        lines.append(f"\n{len(results['missing'])} missing and {len(results['unreadable'])} unreadable images "
                     "counted as failures (ids in the results file).")
    return "\n".join(lines)
