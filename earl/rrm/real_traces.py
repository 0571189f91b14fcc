"""Cold-start traces for a reward model on real edits: `earl data rrm-traces --pairs FILE --out OUT.jsonl`.

Edit-R1's cold start, with VLMs in the oracle's place (`earl.rrm.coldstart` is the ShapesEdit
version, where the oracle writes the traces). For each distinct (source, instruction, edited image)
of a pair file (`earl.rrm.pairs.load_pair_file`):

1. principles: the 10 points from a multimodal LLM, cached per (source, instruction) (`llm_points`);
2. candidates: the *writer* (a VLM behind an OpenAI-compatible server) writes `n` traces at
   `temperature`, in the reward model's own prompt and contract (`rrm_messages`, `parse_trace`);
   replies that do not parse are dropped;
3. reference: the *verifier* (a stronger VLM) judges the same prompt greedily; its per-point verdicts
   are the labels;
4. selection: the candidate agreeing with the reference on the most points is kept (`select_trace`).

Each kept example is one jsonl line: the image paths, instruction, points, the selected trace, its
agreement, the reference verdicts, and `messages`, the chat a VLM SFT trainer reads (the
`rrm_messages` prompt with image paths, and the trace as the assistant turn). Lines are appended
and flushed one by one; a re-run skips the images already written, and a line cut off by a crash is
dropped and redone. An image whose principles, candidates or reference all failed is logged in
`OUT.failed.jsonl` (with the reason) and retried on the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from earl.io import atomic_write_text, read_jsonl
from earl.rrm.chat import rrm_messages
from earl.rrm.coldstart import select_trace
from earl.rrm.pairs import load_pair_file
from earl.rrm.principles import PrincipleCache, llm_points
from earl.rrm.trace import parse_trace
from earl.verify.chat import chat_with_retries

log = logging.getLogger(__name__)


@dataclass
class TraceOptions:
    n: int = 4  # candidate traces per image
    temperature: float = 1.0
    max_tokens: int = 600
    retries: int = 2
    concurrency: int = 8


def example_key(example: dict) -> str:
    return json.dumps([str(example["source"]), example["instruction"], str(example["image"])])


def _read_done(path: Path) -> set[str]:
    """Keys of complete lines; a truncated last line (a crash mid-write) is cut off so it is redone."""
    if not path.is_file():
        return set()
    rows = read_jsonl(path, torn_tail=True)
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return {row["key"] for row in rows}


async def _one(example: dict, points, writer, verifier, opt: TraceOptions, sem: asyncio.Semaphore) -> dict:
    def load(p):
        with Image.open(p) as im:
            return im.convert("RGB")

    messages = rrm_messages(load(example["source"]), load(example["image"]), example["instruction"], points)

    def parse(text):
        return parse_trace(text, len(points))

    async def ask(backend, temperature):
        async with sem:
            return await chat_with_retries(backend, messages, parse, max_tokens=opt.max_tokens,
                                           temperature=temperature, retries=opt.retries, backoff=1.0)

    calls = await asyncio.gather(ask(verifier, 0.0), *(ask(writer, opt.temperature) for _ in range(opt.n)))
    reference, candidates = calls[0], [c for c in calls[1:] if c.value is not None]
    if reference.value is None:
        return {"error": f"verifier failed: {reference.error}"}
    if not candidates:
        return {"error": f"no candidate trace parsed ({calls[1].error})"}
    best = candidates[select_trace([c.value.passed for c in candidates], reference.value.passed)]
    agree = sum(a == b for a, b in zip(best.value.passed, reference.value.passed)) / len(points)
    prompt = [{"type": "image", "image": str(example["source"])}, {"type": "image", "image": str(example["image"])},
              messages[0]["content"][2]]
    return {"candidates": len(candidates), "trace": best.raw, "agreement": agree,
            "reference": reference.value.passed, "reference_score": reference.value.score,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": best.raw}]}


async def _judged(example: dict, points, writer, verifier, opt: TraceOptions) -> dict:
    """`_one` in its own event loop; HTTP connections are bound to the loop, so they close with it."""
    try:
        return await _one(example, points, writer, verifier, opt, asyncio.Semaphore(opt.concurrency))
    finally:
        await writer.aclose()
        await verifier.aclose()


def write_real_traces(pair_file: str | Path, out: str | Path, writer, verifier, principles_backend,
                      principle_cache: str | Path | None = None, options: TraceOptions | None = None,
                      progress: bool = True) -> dict:
    """Build the cold-start file; returns counts {images, written, skipped_done, failed}."""
    options = options or TraceOptions()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed_path = out.with_suffix(".failed.jsonl")
    pairs, _ = load_pair_file(pair_file)
    examples = list({example_key(e): e for p in pairs for e in (p.preferred, p.rejected)}.values())
    done = _read_done(out)
    todo = [e for e in examples if example_key(e) not in done]
    cache = PrincipleCache(principle_cache) if principle_cache else None
    counts = {"images": len(examples), "written": 0, "skipped_done": len(examples) - len(todo), "failed": 0}
    failures = []
    with out.open("a") as f:
        for e in tqdm(todo, desc="rrm traces", disable=not progress):
            with Image.open(e["source"]) as im:
                points = llm_points(principles_backend, im.convert("RGB"), e["instruction"], cache,
                                    retries=options.retries)
            if points is None:
                row = {"error": "no principles: the decomposition failed on every try"}
            else:
                row = asyncio.run(_judged(e, points, writer, verifier, options))
            base = {"key": example_key(e), "source": str(e["source"]), "edited": str(e["image"]),
                    "instruction": e["instruction"]}
            if "error" in row:
                counts["failed"] += 1
                failures.append({**base, "error": row["error"]})
                log.warning("%s: %s", e["image"], row["error"])
                continue
            f.write(json.dumps({**base, "points": [p.public() for p in points], **row}) + "\n")
            f.flush()
            counts["written"] += 1
    atomic_write_text(failed_path, "".join(json.dumps(r) + "\n" for r in failures))
    return counts
