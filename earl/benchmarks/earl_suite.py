"""EARL's evaluation suite: local copies of six editing benchmarks, judged by VIEScore.

The protocol EARL describes: per sample, two VIEScore judge calls on 0-10 scales, SC = min of
[edit success, over-editing] on [source, edited], PQ = min of [naturalness, artifacts] on [edited],
overall O = sqrt(SC * PQ); per benchmark, the mean over its samples; the suite's score is the
unweighted mean of the benchmark means. The benchmarks are OmniEdit, EmuEdit, AURORA, MagicBrush,
VisMin and I2EBench. The judge prompts are earl's own VIEScore prompts (`earl.verify.viescore`, the
ones its RL reward uses), not the VIEScore paper's text, and the judge is whatever server the user
points at; scores are therefore comparable between earl runs, not to the paper's numbers.

Nothing is downloaded: the user prepares one directory per benchmark under a root, each holding an
`items.jsonl`, one edit a line:

    ROOT/omniedit/items.jsonl      {"id": "...", "instruction": "...", "source_image": "images/0001.png"}
    ROOT/omniedit/images/0001.png  (source_image is a path relative to the benchmark's directory,
    ROOT/emuedit/items.jsonl        or an absolute path)
    ...

Directory names are the lower-case benchmark names above (`omniedit`, `emuedit`, `aurora`,
`magicbrush`, `vismin`, `i2ebench`); any other directory with an `items.jsonl` is scored too, after
them. `id` must be unique within its benchmark. Which samples of each benchmark make up the set is
the user's choice (EARL's own subsets are not distributed with earl), so the numbers are only
comparable between runs on the same files.

As for the other runners, edits and judge replies are cached under the output directory, a reply
that does not parse after the retries is a counted failure (never a guessed score), a missing edited
image is counted as missing, and the images go to the judge at their own size.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from earl.benchmarks.gedit import _summary, viescore_rows
from earl.benchmarks.runner import BenchItem, JudgeSpec
from earl.errors import DataError
from earl.io import iter_jsonl, load_image
from earl.verify.viescore import parse_scores, perceptual_messages, semantic_messages

BENCHMARKS = ("omniedit", "emuedit", "aurora", "magicbrush", "vismin", "i2ebench")
NAMES = {"omniedit": "OmniEdit", "emuedit": "EmuEdit", "aurora": "AURORA", "magicbrush": "MagicBrush",
         "vismin": "VisMin", "i2ebench": "I2EBench"}
FIELDS = ("id", "instruction", "source_image")


def _read_items(bench_dir: Path) -> list[BenchItem]:
    jsonl, name = bench_dir / "items.jsonl", bench_dir.name
    items, absent, seen = [], [], set()
    for n, rec in iter_jsonl(jsonl):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) and rec[k].strip() for k in FIELDS):
            raise DataError(f"{jsonl}:{n}: expected an object with non-empty strings {', '.join(FIELDS)}")
        if rec["id"] in seen:
            raise DataError(f"{jsonl}:{n}: id {rec['id']!r} appears twice")
        seen.add(rec["id"])
        path = bench_dir / rec["source_image"]  # an absolute source_image replaces bench_dir
        if not path.is_file():
            absent.append(rec["source_image"])
        items.append(BenchItem(key=f"{name}/{rec['id']}", group=name, instruction=rec["instruction"],
                               source=lambda p=path: load_image(p, what=f"{name} source {p}"),
                               meta={"id": rec["id"]}))
    if absent:
        raise DataError(f"{bench_dir}: {len(absent)} source image(s) not found, e.g. {absent[:3]} "
                        "(source_image is relative to this directory)")
    if not items:
        raise DataError(f"{jsonl}: no items")
    return items


def load_suite(root: str | Path, benchmarks: list[str] | None = None) -> list[BenchItem]:
    """The items of `benchmarks` (directory names under `root`; default: every directory with an
    items.jsonl, the six named benchmarks first in the order of BENCHMARKS)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: suite directory not found (expected one directory per benchmark, each with "
                        "an items.jsonl)")
    found = sorted(p.name for p in root.iterdir() if (p / "items.jsonl").is_file())
    if benchmarks:
        absent = [b for b in benchmarks if b not in found]
        if absent:
            raise DataError(f"{root}: no {', '.join(f'{b}/items.jsonl' for b in absent)}")
        names = list(benchmarks)
    else:
        names = [b for b in BENCHMARKS if b in found] + [b for b in found if b not in BENCHMARKS]
    if not names:
        raise DataError(f"{root}: no benchmark directories (expected e.g. {root}/omniedit/items.jsonl with "
                        '{"id", "instruction", "source_image"} lines)')
    return [it for name in names for it in _read_items(root / name)]


def judge_specs() -> list[JudgeSpec]:
    """earl's two VIEScore calls: semantic [source, edited] and perceptual [edited], two scores each."""
    def sc_messages(item: BenchItem, edited: Image.Image) -> list[dict]:
        return semantic_messages(item.source().convert("RGB"), edited.convert("RGB"), item.instruction)

    def pq_messages(item: BenchItem, edited: Image.Image) -> list[dict]:
        return perceptual_messages(edited.convert("RGB"))

    return [JudgeSpec("sc", sc_messages, lambda item, text: parse_scores(text, 2)),
            JudgeSpec("pq", pq_messages, lambda item, text: parse_scores(text, 2))]


def score(items: list[BenchItem], out_dir: Path) -> dict:
    """Per sample SC, PQ, O; per benchmark the means; the suite the unweighted mean of the benchmarks."""
    rows = viescore_rows(items, out_dir)
    summary = _summary(rows)
    order = list(dict.fromkeys(it.group for it in items))  # the benchmarks in the order they were loaded
    return {"benchmark": "EARL suite", "per_benchmark": {b: summary["per_group"][b] for b in order},
            "overall": summary["overall"], "samples": rows}


def format_table(result: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["EARL suite, VIEScore 0-10 (judge replies that failed to parse are excluded and counted, never guessed)",
             "", "| benchmark | n | SC | PQ | O | failed | missing |", "|---|---:|---:|---:|---:|---:|---:|"]
    for b, s in result["per_benchmark"].items():
        lines.append(f"| {NAMES.get(b, b)} | {s['n']} | {f(s['SC'])} | {f(s['PQ'])} | {f(s['O'])} | {s['failed']} "
                     f"| {s['missing']} |")
    o = result["overall"]
    lines.append(f"| average | {o['n']} | {f(o['SC'])} | {f(o['PQ'])} | {f(o['O'])} | {o['failed']} | {o['missing']} |")
    lines += ["", f"judged {o['judged']}/{o['n']}; the average is the unweighted mean of the benchmarks with scores"]
    return "\n".join(lines)


def csv_rows(result: dict) -> tuple[list[str], list[list]]:
    header = ["benchmark", "n", "judged", "failed", "missing", "SC", "PQ", "O"]
    rows = [[NAMES.get(b, b), s["n"], s["judged"], s["failed"], s["missing"], s["SC"], s["PQ"], s["O"]]
            for b, s in result["per_benchmark"].items()]
    o = result["overall"]
    rows.append(["average", o["n"], o["judged"], o["failed"], o["missing"], o["SC"], o["PQ"], o["O"]])
    return header, rows
