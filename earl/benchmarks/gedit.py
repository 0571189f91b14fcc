"""GEdit-Bench: edits of real photos in 11 groups, judged by a VLM with VIEScore's two prompts.

Scoring follows the official scripts (Step1X-Edit `GEdit-Bench/`):
- per sample, two judge calls with the benchmark's own prompts (read from the directory the user
  gives, e.g. `/data/gedit-prompts`; `<instruction>` is their placeholder):
  SC: [source, edited] -> [editing success, over-editing];  PQ: [edited] -> [naturalness, artifacts];
  SC = min of the first pair, PQ = min of the second, O = sqrt(SC * PQ);
- a group's score is the mean over its samples in one language; the reported score is the
  **unweighted mean of the group means**; the "intersection" score repeats this on the rows whose
  `Intersection_exist` is true.
- both images go to the judge resized to about 512x512 pixels of area, each keeping its aspect
  ratio, with the official runner's arithmetic: width = sqrt(512*512 * w/h), height = width / (w/h),
  both truncated by int() (1280x720 -> 682x384), bicubic (the June 2025 runner); the message is the
  prompt text followed by the images.

Where earl differs on purpose: the official parser substitutes random scores when a reply does not
parse, and skips missing images. earl retries, then records the call as failed, leaves the sample
out of the means and reports how many failed and how many images were missing, next to the scores.

Which source image goes where: the editor is given `input_image`; the judge's SC call is shown
`input_image_raw`, as the current official runner (`test_gedit_score.py`) does. A copy of the data
without an `input_image_raw` column falls back to `input_image` for the judge: a warning is logged,
and results.json (`judge_source`) and results.md say which column the judge saw.

The benchmark is read from a local copy of the published dataset (`stepfun-ai/GEdit-Bench`: fields
task_type, key, instruction, instruction_language, input_image, input_image_raw (optional, see
above), Intersection_exist), either the hub's parquet files or a `datasets.save_to_disk` directory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from PIL import Image

from earl.benchmarks.runner import BenchItem, JudgeSpec, image_path, load_judgements, resize_to_area
from earl.errors import DataError
from earl.io import load_dataset_image
from earl.verify.viescore import parse_scores

GROUPS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
          "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")
FIELDS = ("task_type", "key", "instruction", "instruction_language", "input_image", "Intersection_exist")
JUDGE_AREA = 512 * 512
JUDGE_SOURCE = "input_image_raw"  # the source image the official runner shows the judge

log = logging.getLogger(__name__)


def load_dataset_dir(path: str | Path):
    """A local copy of a Hugging Face dataset: `save_to_disk` output or a folder of parquet files."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: benchmark directory not found")
    if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    files = sorted(str(p) for p in path.rglob("*.parquet"))
    if not files:
        raise DataError(f"{path}: no parquet files (expected the benchmark's published parquet files or a "
                        "datasets.save_to_disk directory)")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _as_image(value, where: str) -> Image.Image:
    return load_dataset_image(value, what=where)  # parquet without the Image feature: {"bytes", "path"}


def load_gedit(path: str | Path, language: str = "en") -> list[BenchItem]:
    """The rows in `language`; each item's `source` is `input_image` (what the editor is given) and its
    `meta["judge_source"]` loads the image the judge is shown (`input_image_raw`, or `input_image`
    when the copy has no such column; `meta["judge_column"]` says which)."""
    ds = load_dataset_dir(path)
    missing = [f for f in FIELDS if f not in ds.column_names]
    if missing:
        raise DataError(f"{path}: not GEdit-Bench data: missing field(s) {', '.join(missing)} "
                        f"(expected {', '.join(FIELDS)})")
    judge_column = JUDGE_SOURCE if JUDGE_SOURCE in ds.column_names else "input_image"
    if judge_column != JUDGE_SOURCE:
        log.warning("%s: no %s column; the judge is shown input_image instead (the official runner shows "
                    "input_image_raw)", path, JUDGE_SOURCE)
    meta = ds.select_columns([f for f in FIELDS if f != "input_image"])
    inputs, judge_inputs = ds.select_columns(["input_image"]), ds.select_columns([judge_column])
    items = []
    for i, row in enumerate(meta):
        if row["instruction_language"] != language:
            continue

        def source(i=i, key=row["key"]):
            return _as_image(inputs[i]["input_image"], f"{path}: input_image of {key}")

        def judge_source(i=i, key=row["key"]):
            return _as_image(judge_inputs[i][judge_column], f"{path}: {judge_column} of {key}")

        items.append(BenchItem(key=f"{language}/{row['task_type']}/{row['key']}", group=row["task_type"],
                               instruction=row["instruction"], source=source,
                               meta={"language": language, "intersection": bool(row["Intersection_exist"]),
                                     "judge_source": judge_source, "judge_column": judge_column}))
    if not items:
        raise DataError(f"{path}: no rows with instruction_language == {language!r}")
    return items


def load_prompts(prompt_dir: str | Path) -> dict[str, str]:
    prompt_dir = Path(prompt_dir)
    out = {}
    for name in ("sc", "pq"):
        p = prompt_dir / f"{name}_prompt.txt"
        if not p.is_file():
            raise DataError(f"{p}: GEdit-Bench judge prompt not found (expected sc_prompt.txt and pq_prompt.txt "
                            "from the benchmark's VIEScore prompts)")
        out[name] = p.read_text(encoding="utf-8")
    if "<instruction>" not in out["sc"]:
        raise DataError(f"{prompt_dir / 'sc_prompt.txt'}: no <instruction> placeholder")
    return out


def _judge_source(item: BenchItem) -> Image.Image:
    """The source image the judge is shown (see `load_gedit`); items built elsewhere fall back to `source`."""
    return item.meta.get("judge_source", item.source)()


def judge_specs(prompts: dict[str, str]) -> list[JudgeSpec]:
    def sc_messages(item: BenchItem, edited: Image.Image) -> list[dict]:
        text = prompts["sc"].replace("<instruction>", item.instruction)
        return [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image", "image": resize_to_area(_judge_source(item).convert("RGB"), JUDGE_AREA)},
            {"type": "image", "image": resize_to_area(edited.convert("RGB"), JUDGE_AREA)}]}]

    def pq_messages(item: BenchItem, edited: Image.Image) -> list[dict]:
        return [{"role": "user", "content": [
            {"type": "text", "text": prompts["pq"]},
            {"type": "image", "image": resize_to_area(edited.convert("RGB"), JUDGE_AREA)}]}]

    return [JudgeSpec("sc", sc_messages, lambda item, text: parse_scores(text, 2)),
            JudgeSpec("pq", pq_messages, lambda item, text: parse_scores(text, 2))]


def sample_scores(sc: list[float], pq: list[float]) -> dict[str, float]:
    s, p = min(sc), min(pq)
    return {"SC": s, "PQ": p, "O": math.sqrt(s * p)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summary(rows: list[dict]) -> dict:
    """Group means, then the unweighted mean over groups, for SC, PQ and O."""
    groups = [g for g in GROUPS if any(r["group"] == g for r in rows)]
    groups += sorted({r["group"] for r in rows} - set(groups))
    per_group = {}
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        ok = [r for r in mine if r["scores"] is not None]
        per_group[g] = {"n": len(mine), "judged": len(ok), "failed": sum(r["status"] == "failed" for r in mine),
                        "missing": sum(r["status"] == "missing" for r in mine),
                        **{k: _mean([r["scores"][k] for r in ok]) for k in ("SC", "PQ", "O")}}
    scored = [g for g in groups if per_group[g]["judged"]]
    overall = {k: _mean([per_group[g][k] for g in scored]) for k in ("SC", "PQ", "O")}
    overall.update(n=len(rows), judged=sum(per_group[g]["judged"] for g in groups),
                   failed=sum(per_group[g]["failed"] for g in groups),
                   missing=sum(per_group[g]["missing"] for g in groups),
                   groups=len(groups), groups_without_scores=[g for g in groups if g not in scored])
    return {"overall": overall, "per_group": per_group}


def viescore_rows(items: list[BenchItem], out_dir: Path) -> list[dict]:
    """One row per item from what is on disk: key, group, status (ok, missing, not judged, failed) and the
    sample's SC / PQ / O. Shared by every benchmark scored with VIEScore's SC and PQ judgements."""
    stored = load_judgements(out_dir, ("sc", "pq"), items)
    rows = []
    for it in items:
        j = stored[it.key]
        if not image_path(out_dir, it).is_file():
            status, scores = "missing", None
        elif j["sc"] is None or j["pq"] is None:
            status, scores = "not judged", None
        elif j["sc"]["value"] is None or j["pq"]["value"] is None:
            status, scores = "failed", None
        else:
            status, scores = "ok", sample_scores(j["sc"]["value"], j["pq"]["value"])
        rows.append({"key": it.key, "group": it.group, "status": status, "scores": scores})
    return rows


def score(items: list[BenchItem], out_dir: Path) -> dict:
    """The official aggregation over whatever is on disk; failed and missing samples are counted."""
    rows = viescore_rows(items, out_dir)
    for row, it in zip(rows, items):
        row["intersection"] = it.meta["intersection"]
    language = items[0].meta["language"] if items else None
    judge_column = items[0].meta.get("judge_column", "input_image") if items else None
    return {"benchmark": "GEdit-Bench", "language": language, "judge_source": judge_column, "full": _summary(rows),
            "intersection": _summary([r for r in rows if r["intersection"]]), "samples": rows}


def format_table(result: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lang = (result["language"] or "?").upper()
    lines = [f"GEdit-Bench-{lang} (judge replies that failed to parse are excluded and counted, never guessed)", "",
             "| set | SC | PQ | O | judged | failed | missing |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("full", "intersection"):
        o = result[name]["overall"]
        lines.append(f"| {name} | {f(o['SC'])} | {f(o['PQ'])} | {f(o['O'])} | {o['judged']}/{o['n']} | {o['failed']} "
                     f"| {o['missing']} |")
    lines += ["", "| group (full set) | n | SC | PQ | O | failed | missing |", "|---|---:|---:|---:|---:|---:|---:|"]
    for g, s in result["full"]["per_group"].items():
        lines.append(f"| {g} | {s['n']} | {f(s['SC'])} | {f(s['PQ'])} | {f(s['O'])} | {s['failed']} | {s['missing']} |")
    source = result.get("judge_source")
    if source == JUDGE_SOURCE:
        lines += ["", f"source image shown to the judge: {JUDGE_SOURCE} (as the official runner)"]
    elif source is not None:
        lines += ["", f"source image shown to the judge: {source} (this copy of the data has no {JUDGE_SOURCE} "
                      "column, which the official runner shows the judge)"]
    return "\n".join(lines)


def csv_rows(result: dict) -> tuple[list[str], list[list]]:
    header = ["set", "group", "n", "judged", "failed", "missing", "SC", "PQ", "O"]
    rows = []
    for name in ("full", "intersection"):
        for g, s in result[name]["per_group"].items():
            rows.append([name, g, s["n"], s["judged"], s["failed"], s["missing"], s["SC"], s["PQ"], s["O"]])
        o = result[name]["overall"]
        rows.append([name, "average", o["n"], o["judged"], o["failed"], o["missing"], o["SC"], o["PQ"], o["O"]])
    return header, rows
