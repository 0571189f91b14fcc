"""What the GEdit-Bench and ImgEdit-Bench runners share: cached edits, cached judgements, failure counts.

A benchmark run has two resumable stages, each keeping every result on disk as soon as it exists:

    OUT/images/{key}.png                 the edited image of each item (generated once)
    OUT/agent/{key}.json                 with an agent pipeline as the editor: its record of the item
                                         (plan, steps, failure, fallback, editor calls), written first
    OUT/judgements/{call}/{key}.json     each judge call's reply, parsed value and error (asked once)

Re-running the same command skips what is already there, so a crash or an interrupted run loses at
most the calls in flight. A judge reply that does not parse after the retries is stored as failed
(value null, with the raw reply and the error): failures are counted and reported next to the
scores, never replaced by a guess. Delete a judgement file (or pass `retry_failed=True`) to ask again.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from earl.agents.plan import Plan
from earl.agents.records import summarise_records
from earl.io import atomic_write_json, atomic_write_text, load_image, read_json, save_png
from earl.verify.chat import ChatBackend, chat_with_retries


@dataclass
class BenchItem:
    """One benchmark sample: its key, group (edit type), instruction and source image."""

    key: str
    group: str
    instruction: str
    source: Callable[[], Image.Image]  # loads the source image (benchmarks are too big to hold in memory)
    meta: dict = field(default_factory=dict)  # benchmark-specific fields (language, intersection flag, ...)


def _safe(key: str) -> str:
    """A file name for a key (keys may contain '/' or be very long): readable prefix + short hash."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
    return cleaned if cleaned == key else f"{cleaned}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def image_path(out_dir: Path, item: BenchItem) -> Path:
    return Path(out_dir) / "images" / f"{_safe(item.key)}.png"


def agent_path(out_dir: Path, item: BenchItem) -> Path:
    return Path(out_dir) / "agent" / f"{_safe(item.key)}.json"


# An edit function returns the edited image, or (image, record) when an agent pipeline made it: the
# record (`AgentResult.to_dict()`) is kept next to the image and shown in each item's result row.
EditFn = Callable[[Image.Image, str], "Image.Image | tuple[Image.Image, dict]"]


def generate_missing(items: list[BenchItem], edit: EditFn, out_dir: Path, progress: bool = True) -> int:
    """Edit every item whose output image is not on disk yet; returns how many were generated."""
    todo = [it for it in items if not image_path(out_dir, it).is_file()]
    for it in tqdm(todo, desc="edit", disable=not progress):
        edited = edit(it.source(), it.instruction)
        if isinstance(edited, tuple):
            edited, record = edited
            atomic_write_json(agent_path(out_dir, it), record)  # before the image: an image never lacks its record
        save_png(edited, image_path(out_dir, it))
    return len(todo)


def attach_agent_records(result: dict, items: list[BenchItem], out_dir: Path) -> None:
    """Give each sample row of `result` whose item has an agent record its plan, step count, failure,
    fallback and editor calls, and `result` an `agent` summary over them (nothing when there are none)."""
    by_key = {it.key: agent_path(out_dir, it) for it in items}
    records = []
    for row in result.get("samples", []):
        p = by_key.get(row.get("key"))
        if p is None or not p.is_file():
            continue
        rec = read_json(p)
        plan = Plan.from_dict(rec["plan"]) if rec.get("plan") else None
        row["agent"] = {"plan": [s.text() for s in plan.steps] if plan else None, "n_steps": rec.get("n_steps"),
                        "failure": rec.get("failure"), "fallback": rec.get("fallback"),
                        "editor_calls": rec.get("editor_calls")}
        records.append(rec)
    if records:
        result["agent"] = {"edits": len(records), **summarise_records(records)}


@dataclass
class JudgeSpec:
    """One kind of judge call: how to build its messages for an item and how to parse the reply."""

    name: str  # directory under OUT/judgements/
    messages: Callable[[BenchItem, Image.Image], list[dict]]  # (item, edited image) -> chat messages
    parse: Callable[[BenchItem, str], Any]  # (item, reply) -> value, or None when it cannot be read


@dataclass
class JudgeOptions:
    max_tokens: int = 512
    temperature: float = 0.0
    concurrency: int = 16
    retries: int = 2
    backoff: float = 1.0


def judgement_path(out_dir: Path, call: str, item: BenchItem) -> Path:
    return Path(out_dir) / "judgements" / call / f"{_safe(item.key)}.json"


def load_judgements(out_dir: Path, calls: Iterable[str], items: list[BenchItem]) -> dict[str, dict]:
    """{key: {call name: stored judgement ({"value", "raw", "error", ...}) or None if not asked yet}}."""
    calls = list(calls)
    out: dict[str, dict] = {}
    for it in items:
        out[it.key] = {}
        for call in calls:
            p = judgement_path(out_dir, call, it)
            out[it.key][call] = read_json(p) if p.is_file() else None
    return out


async def _judge_one(backend: ChatBackend, spec: JudgeSpec, item: BenchItem, out_dir: Path, opts: JudgeOptions,
                     sem: asyncio.Semaphore) -> None:
    edited = load_image(image_path(out_dir, item), what=f"edited image of {item.key}")
    async with sem:
        call = await chat_with_retries(backend, spec.messages(item, edited), lambda text: spec.parse(item, text),
                                       max_tokens=opts.max_tokens, temperature=opts.temperature,
                                       retries=opts.retries, backoff=opts.backoff)
    atomic_write_json(judgement_path(out_dir, spec.name, item),
                      {"key": item.key, "value": call.value, "raw": call.raw, "error": call.error,
                       "attempts": call.attempts})


def _failed(spec: JudgeSpec, item: BenchItem, stored: dict) -> bool:
    """Whether a stored judgement counts as failed: its stored reply does not parse. The reply is read
    again, so a judgement stored under an older parser is judged by the current one (for a parser
    that has not changed this is the same as a stored value of None)."""
    return spec.parse(item, stored.get("raw") or "") is None


async def judge_missing(items: list[BenchItem], specs: list[JudgeSpec], backend: ChatBackend, out_dir: Path,
                        opts: JudgeOptions | None = None, retry_failed: bool = False, progress: bool = True) -> int:
    """Ask every judge call that has no stored judgement (and failed ones with `retry_failed`:
    those whose stored reply the spec's current parser cannot read).

    Items without an edited image are skipped (they count as missing in the scores). Returns the
    number of calls made.
    """
    opts = opts or JudgeOptions()
    sem = asyncio.Semaphore(opts.concurrency)
    todo = []
    for it in items:
        if not image_path(out_dir, it).is_file():
            continue
        for spec in specs:
            p = judgement_path(out_dir, spec.name, it)
            if p.is_file() and not (retry_failed and _failed(spec, it, read_json(p))):
                continue
            todo.append((spec, it))
    bar = tqdm(total=len(todo), desc="judge", disable=not progress)

    async def run(spec, it):
        await _judge_one(backend, spec, it, out_dir, opts, sem)
        bar.update(1)

    try:
        await asyncio.gather(*(run(spec, it) for spec, it in todo))
    finally:
        bar.close()
    return len(todo)


def resize_to_area(image: Image.Image, area: int) -> Image.Image:
    """Scale to about `area` pixels keeping the aspect ratio, as GEdit-Bench's runner feeds the judge:
    with ratio = w / h, width = sqrt(area * ratio) and height = width / ratio, both truncated by int()
    (1280x720 at 512*512 -> 682x384), then a bicubic resize (PIL's default for RGB)."""
    w, h = image.size
    ratio = w / h
    width = math.sqrt(area * ratio)
    height = width / ratio
    size = (max(1, int(width)), max(1, int(height)))  # max(1, ...): only an aspect ratio beyond area:1 needs it
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A small CSV written atomically (values are numbers and plain names: no quoting needed beyond commas)."""
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        text = str(v)
        return f'"{text}"' if "," in text else text

    atomic_write_text(path, "\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n")


def run_benchmark(bench, items: list[BenchItem], specs: list[JudgeSpec], out_dir: str | Path,
                  edit: EditFn | None = None, backend: ChatBackend | None = None,
                  opts: JudgeOptions | None = None, retry_failed: bool = False, progress: bool = True,
                  cost=None) -> dict:
    """Generate missing edits (if `edit` is given), ask missing judgements (if `backend` is given), then
    score what is on disk with `bench` (a module with score, format_table, csv_rows) and write
    OUT/results.json, results.csv and results.md. Items edited by an agent pipeline (an `edit` that
    returns (image, record)) carry its record in their result row (`attach_agent_records`).
    `cost`: a `GenerationCost` the edit function counts its forwards into: results.json's `generation`
    gives it for the images this run made (a run that made none keeps the previous run's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if edit is not None:
        generate_missing(items, edit, out_dir, progress=progress)
    if backend is not None:
        async def judge():
            try:
                await judge_missing(items, specs, backend, out_dir, opts, retry_failed=retry_failed,
                                    progress=progress)
            finally:
                await backend.aclose()

        asyncio.run(judge())
    result = bench.score(items, out_dir)
    attach_agent_records(result, items, out_dir)
    previous = out_dir / "results.json"
    if cost is not None and cost.images:
        result["generation"] = cost.to_dict()
    elif previous.is_file() and "generation" in (kept := read_json(previous)):
        result["generation"] = kept["generation"]
    atomic_write_json(out_dir / "results.json", result)
    write_csv(out_dir / "results.csv", *bench.csv_rows(result))
    atomic_write_text(out_dir / "results.md", bench.format_table(result) + "\n")
    return result
