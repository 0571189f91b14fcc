"""ImgEdit-Bench's UGE ("Hard") suite: 47 edits, one 1-5 judgement each, the suite's mean.

Scoring follows the official scripts (PKU-YuanGroup/ImgEdit `Benchmark/UGE/`): one judge call per
sample, [prompt with `<edit_prompt>` replaced by the instruction, original, edited]; every reply line
of the form `Name: n` (split at ": " into exactly two parts, n all digits) is a score; a sample's
score is the mean of its scores rounded to 2 decimals; the suite's score is the mean of the sample
scores, rounded to 2 decimals.

The judge prompt lives inside the official evaluation script, not in a data file, so the user saves
it to a text file and gives its path (the benchmark's own text is never copied into earl). As for
the Basic suite, the reply reader is `earl.benchmarks.imgedit.parse_reply` (the same rule in both
official scripts), and the deviations listed in `earl.benchmarks.imgedit` apply here too: a reply
with no score line is re-asked and then a counted failure, not a skipped row, and a reply with a
score outside 1-5 is a failure too (the official script would average it in), said next to the
numbers.
"""

from __future__ import annotations

from pathlib import Path

from earl.benchmarks.imgedit import edit_messages, load_imgedit, parse_reply, sample_rows
from earl.benchmarks.runner import BenchItem, JudgeSpec
from earl.errors import DataError

NAME = "ImgEdit-Bench UGE"


def load_uge(edits_json: str | Path, images_root: str | Path) -> list[BenchItem]:
    return load_imgedit(edits_json, images_root, suite="uge")


def load_prompt(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: UGE judge prompt not found (save the prompt string of the official "
                        "Benchmark/UGE/UGE_bench.py to this file)")
    text = path.read_text(encoding="utf-8")
    if "<edit_prompt>" not in text:
        raise DataError(f"{path}: the UGE judge prompt needs the <edit_prompt> placeholder")
    return text


def judge_specs(prompt: str) -> list[JudgeSpec]:
    return [JudgeSpec("judge", lambda item, edited: edit_messages(prompt, item, edited),
                      lambda item, text: parse_reply(text))]


def score(items: list[BenchItem], out_dir: Path) -> dict:
    rows = sample_rows(items, out_dir)
    ok = [r["score"] for r in rows if r["score"] is not None]
    overall = {"score": round(sum(ok) / len(ok), 2) if ok else None, "n": len(rows), "judged": len(ok),
               "failed": sum(r["status"] == "failed" for r in rows),
               "missing": sum(r["status"] == "missing" for r in rows)}
    return {"benchmark": NAME, "overall": overall, "samples": rows}


def format_table(result: dict) -> str:
    o = result["overall"]
    value = "n/a" if o["score"] is None else f"{o['score']:.2f}"
    return "\n".join([
        f"{NAME} (1-5; replies without a score, or with one outside 1-5, are excluded and counted, never guessed)",
        "", "| UGE |", "|---:|", f"| {value} |", "",
        f"judged {o['judged']}/{o['n']}, failed {o['failed']}, missing images {o['missing']}"])


def csv_rows(result: dict) -> tuple[list[str], list[list]]:
    o = result["overall"]
    return ["suite", "n", "judged", "failed", "missing", "score"], [["UGE", o["n"], o["judged"], o["failed"],
                                                                    o["missing"], o["score"]]]
