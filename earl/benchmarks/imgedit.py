"""ImgEdit-Bench (Basic): 737 edits of 9 types, each judged on three 1-5 criteria.

Scoring follows the official scripts (PKU-YuanGroup/ImgEdit `Benchmark/Basic/`: `basic_bench.py`,
`step1_get_avgscore.py`, `step2_typescore.py`):
- one judge call per sample with the prompt of its edit type (from the benchmark's `prompts.json`,
  given by the user; `<edit_prompt>` is the placeholder), the message being [text, original, edited];
- the reply is read as the official script reads it, line by line: a line is a score when, once
  stripped, splitting it at ": " gives exactly two parts and the second is all digits. Every such
  line counts, whatever its name: the criterion names are not checked, so an extra `Overall: 5` line
  is averaged in, a missing criterion leaves the others to be averaged, and `**Name:** 5`, `Name: 4/5`,
  `Name: 3.5` or `Name:  5` (two spaces) are not scores;
- a sample's score is the mean of its scores, rounded to 2 decimals; a type's score is the mean of
  those, rounded to 2 decimals; **Overall is the mean of the 9 type scores**, rounded to 2 decimals
  (the leaderboard's definition; no official script computes it); "compose" is reported as
  "Hybrid", as in the published tables.

Where earl differs from the official scripts (the UGE suite, `earl.benchmarks.imgedit_uge`, shares
the reader and all of these):
- a reply with no score line is re-asked (`--retries`, default 2) and then stored as a counted
  failure; officially it is asked once and the sample silently drops out of the type mean (the
  means are the same; earl says how many);
- a reply with a score outside 1-5 (`Score: 0`, `Score: 10`) is treated the same way, as a failure;
  officially it is averaged in;
- a score written in digits that Python's int() cannot read (`Score: ²`) makes the official script
  stop with an error; earl skips that line;
- a missing edited image is counted as missing, and a judge call that errors (timeout, HTTP error) is
  retried and then counted as failed; officially both leave an error entry in the results file,
  which the scoring script cannot read (it stops);
- judge settings: earl sends temperature 0 and `--max-tokens` (default 1400); the official script
  asks GPT-4o with the API's defaults (temperature 1, no token limit). Images are re-encoded as PNG
  by earl's chat backend; the official script sends each file's bytes as they are on disk;
- judgements are read again from their stored reply text at scoring time, so a run judged by an
  older earl is scored by these rules without asking the judge again.

The benchmark is read from its published files: `basic_edit.json` ({key: {id, prompt, edit_type}})
and the source images under a root directory where each `id` is a relative path
(`Benchmark/singleturn` in the `sysuyy/ImgEdit` release). The UGE ("Hard") suite is scored by
`earl.benchmarks.imgedit_uge`, which shares the loader, the message and the reply reader.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from earl.benchmarks.runner import BenchItem, JudgeSpec, image_path, load_judgements
from earl.errors import DataError
from earl.io import load_image

# The published leaderboard's column order, with its names.
TYPES = ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose", "action")
TYPE_NAMES = {"add": "Add", "adjust": "Adjust", "extract": "Extract", "replace": "Replace", "remove": "Remove",
              "background": "Background", "style": "Style", "compose": "Hybrid", "action": "Action"}
_CRITERION = re.compile(r"^\s*([^:\n]+?):\s*A number from 1 to 5\.?\s*$", re.M)


def load_imgedit(edits_json: str | Path, images_root: str | Path, suite: str = "basic") -> list[BenchItem]:
    """The suite's items: `basic_edit.json` ({key: {id, prompt, edit_type}}) or, with `suite="uge"`,
    `UGE_edit.json` ({key: {id, prompt}}; every item in the one group "uge")."""
    edits_json, images_root = Path(edits_json), Path(images_root)
    fields = ("id", "prompt", "edit_type") if suite == "basic" else ("id", "prompt")
    if suite not in ("basic", "uge"):
        raise DataError(f"ImgEdit suite {suite!r}: expected 'basic' or 'uge'")
    if not edits_json.is_file():
        raise DataError(f"{edits_json}: ImgEdit edits file not found (expected "
                        f"{'basic_edit.json' if suite == 'basic' else 'UGE_edit.json'})")
    try:
        raw = json.loads(edits_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{edits_json}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{edits_json}: expected an object {{key: {{{', '.join(fields)}}}}}")
    items, absent = [], []
    for key, rec in raw.items():
        if not isinstance(rec, dict) or not all(k in rec for k in fields):
            raise DataError(f"{edits_json}: entry {key!r} must have {', '.join(fields)}")
        path = images_root / rec["id"]
        if not path.is_file():
            absent.append(rec["id"])
        items.append(BenchItem(key=str(key), group=rec.get("edit_type", "uge"), instruction=rec["prompt"],
                               source=lambda p=path: load_image(p, what=f"ImgEdit source {p}"),
                               meta={"id": rec["id"]}))
    if absent:
        raise DataError(f"{images_root}: {len(absent)} source image(s) not found, e.g. {absent[:3]} (expected the "
                        "benchmark's images under this root, each at its `id` path)")
    return items


def edit_messages(prompt: str, item: BenchItem, edited: Image.Image) -> list[dict]:
    """The official message: [judge prompt with the instruction, original image, edited image]."""
    return [{"role": "user", "content": [{"type": "text", "text": prompt.replace("<edit_prompt>", item.instruction)},
                                         {"type": "image", "image": item.source().convert("RGB")},
                                         {"type": "image", "image": edited.convert("RGB")}]}]


def load_prompts(prompts_json: str | Path) -> dict[str, str]:
    prompts_json = Path(prompts_json)
    if not prompts_json.is_file():
        raise DataError(f"{prompts_json}: ImgEdit judge prompts not found (expected prompts.json)")
    prompts = json.loads(prompts_json.read_text(encoding="utf-8"))
    for t, text in prompts.items():
        if "<edit_prompt>" not in text or len(criteria(text)) != 3:
            raise DataError(f"{prompts_json}: prompt {t!r} needs an <edit_prompt> placeholder and three "
                            "'Name: A number from 1 to 5.' lines")
    return prompts


def criteria(prompt: str) -> list[str]:
    """The three criterion names a prompt asks for, from its example response format (used to check
    that a prompts file is the benchmark's; replies are not checked against these names)."""
    return [m.group(1).strip() for m in _CRITERION.finditer(prompt)]


def score_lines(text: str) -> list[int]:
    """Every score in a reply, as the official scripts of both suites read them: each line, stripped
    and split at ": ", that gives exactly two parts, the second all digits (a line whose digits int()
    cannot read, such as a superscript, is skipped; the official script would stop there)."""
    scores = []
    for line in text.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            try:
                scores.append(int(parts[1]))
            except ValueError:
                continue
    return scores


def parse_reply(text: str) -> list[float] | None:
    """The reply's scores (see `score_lines`), or None when it has none or one outside 1-5."""
    if not isinstance(text, str):
        return None
    scores = score_lines(text)
    if not scores or not all(1 <= v <= 5 for v in scores):
        return None
    return [float(v) for v in scores]


def judge_specs(prompts: dict[str, str]) -> list[JudgeSpec]:
    def messages(item: BenchItem, edited: Image.Image) -> list[dict]:
        if item.group not in prompts:
            raise DataError(f"no ImgEdit judge prompt for edit type {item.group!r}")
        return edit_messages(prompts[item.group], item, edited)

    return [JudgeSpec("judge", messages, lambda item, text: parse_reply(text))]


def sample_rows(items: list[BenchItem], out_dir: Path) -> list[dict]:
    """Each item's status (ok, failed, missing image, not judged) and score: the mean of the scores in
    its stored reply (read again by `parse_reply`), rounded to 2 decimals, as the official scripts of
    both suites compute it."""
    stored = load_judgements(out_dir, ("judge",), items)
    rows = []
    for it in items:
        j = stored[it.key]["judge"]
        scores = parse_reply(j.get("raw") or "") if j else None
        if not image_path(out_dir, it).is_file():
            status, value = "missing", None
        elif j is None:
            status, value = "not judged", None
        elif scores is None:
            status, value = "failed", None
        else:
            status, value = "ok", round(sum(scores) / len(scores), 2)
        rows.append({"key": it.key, "type": it.group, "status": status, "scores": scores, "score": value})
    return rows


def score(items: list[BenchItem], out_dir: Path) -> dict:
    rows = sample_rows(items, out_dir)
    types = [t for t in TYPES if any(r["type"] == t for r in rows)]
    types += sorted({r["type"] for r in rows} - set(types))
    per_type = {}
    for t in types:
        mine = [r for r in rows if r["type"] == t]
        ok = [r["score"] for r in mine if r["score"] is not None]
        per_type[t] = {"n": len(mine), "judged": len(ok), "failed": sum(r["status"] == "failed" for r in mine),
                       "missing": sum(r["status"] == "missing" for r in mine),
                       "score": round(sum(ok) / len(ok), 2) if ok else None}
    scored = [per_type[t]["score"] for t in types if per_type[t]["score"] is not None]
    overall = {"score": round(sum(scored) / len(scored), 2) if scored else None, "n": len(rows),
               "judged": sum(p["judged"] for p in per_type.values()),
               "failed": sum(p["failed"] for p in per_type.values()),
               "missing": sum(p["missing"] for p in per_type.values()),
               "types_without_scores": [t for t in types if per_type[t]["score"] is None]}
    return {"benchmark": "ImgEdit-Bench", "per_type": per_type, "overall": overall, "samples": rows}


def format_table(result: dict) -> str:
    types = list(result["per_type"])
    cols = [TYPE_NAMES.get(t, t) for t in types]

    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    o = result["overall"]
    return "\n".join([
        "ImgEdit-Bench (1-5; judge replies that failed to parse are excluded and counted, never guessed)", "",
        "| " + " | ".join(cols) + " | Overall |", "|" + "---:|" * (len(cols) + 1),
        "| " + " | ".join(f(result["per_type"][t]["score"]) for t in types) + f" | {f(o['score'])} |", "",
        f"judged {o['judged']}/{o['n']}, failed {o['failed']}, missing images {o['missing']}"])


def csv_rows(result: dict) -> tuple[list[str], list[list]]:
    header = ["type", "n", "judged", "failed", "missing", "score"]
    rows = [[TYPE_NAMES.get(t, t), s["n"], s["judged"], s["failed"], s["missing"], s["score"]]
            for t, s in result["per_type"].items()]
    o = result["overall"]
    rows.append(["Overall", o["n"], o["judged"], o["failed"], o["missing"], o["score"]])
    return header, rows
