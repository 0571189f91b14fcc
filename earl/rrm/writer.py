"""Principle writers: the ten evaluation points from (source image, instruction) alone.

Edit-R1's reasoning reward model writes its own principles before judging; a verifier that is given
them from the answer (the target's scene graph) cannot be used where there is no answer. One
interface, two implementations here and a third above this layer:

    writer.write(sources: list[PIL.Image], instructions: list[str]) -> [list[EvalPoint] | PrincipleFailure]

- `UnifiedPrincipleWriter` (ShapesEdit): earl's unified token model reading
  `<bos> "principles : {instruction}" [source image]` and writing the points in the form the reward
  model reads them in its prompt (`earl.rrm.verifier.points_text`):
  `1. (instruction) Is there a small red circle at row 2, column 3? 2. (preservation) ...`.
  A word-level tokenizer lower-cases and spaces out punctuation, so the JSON list of
  `earl.rrm.principles.parse_points` would not survive decoding; this form does, and is turned
  into that JSON list and read by the same rules (`read_points`). Trained by SFT with the exact
  scene-graph points (`shapes_points(source, target)`) as labels: the target is read at training
  time only (`earl.train.writer`).
- `ChatPrincipleWriter` (real data): a multimodal chat LLM prompted with `DECOMPOSE_PROMPT`
  (`llm_points`'s path), cached per (source image, instruction).
- `PlanPrincipleWriter` (ShapesEdit, `earl.agents.plan_writer`, above this layer because it uses the
  agent's decomposer): a tool-using writer, not a learned one. The decomposer writes a plan, the
  ShapesEdit image parser reads the source scene, the plan applied to it gives the predicted target,
  and the points are `shapes_points(source, predicted target)`.

A reply that cannot be read is a named `PrincipleFailure` (`FAILURE_KINDS`), counted by whoever
asked, never repaired or guessed: a verifier then fails that request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from earl.errors import EarlError
from earl.generate import greedy_text
from earl.model import UnifiedEditor
from earl.rrm.principles import _COUNTS, CATEGORIES, N_POINTS, EvalPoint, PrincipleCache, decompose_messages
from earl.verify.chat import build_chat_backend, chat_with_retries

FAILURE_KINDS = (
    "malformed",  # not a list of numbered points with a category and a question each
    "too_few",  # fewer than ten points
    "too_many",  # more than ten points
    "categories",  # ten points, but not 3-4 instruction / 3-4 preservation / 2-3 quality
    "unfinished",  # the model's token budget ran out before it ended its reply
    "writer_error",  # the writer itself failed (a server that timed out or refused)
    "plan",  # a plan writer's decomposer wrote no readable plan (`earl.agents.plan_writer`)
    "unapplicable",  # a plan writer's plan does not apply to the scene read from the source image, or changes nothing
)
PROMPT_PREFIX = "principles :"
MAX_WRITER_TOKENS = 240


@dataclass(frozen=True)
class PrincipleFailure:
    kind: str  # one of FAILURE_KINDS
    detail: str = ""
    raw: str = ""

    def __post_init__(self):
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"PrincipleFailure: kind must be one of {', '.join(FAILURE_KINDS)}, got {self.kind!r}")


def _check_counts(points: list[EvalPoint], raw: str) -> list[EvalPoint] | PrincipleFailure:
    if len(points) < N_POINTS:
        return PrincipleFailure("too_few", f"{len(points)} points, expected {N_POINTS}", raw)
    if len(points) > N_POINTS:
        return PrincipleFailure("too_many", f"{len(points)} points, expected {N_POINTS}", raw)
    counts = {c: sum(p.category == c for p in points) for c in CATEGORIES}
    bad = [f"{c} {counts[c]} (expected {lo}-{hi})" for c, (lo, hi) in _COUNTS.items() if not lo <= counts[c] <= hi]
    if bad:
        return PrincipleFailure("categories", ", ".join(bad), raw)
    return points


def read_points(text: str) -> list[EvalPoint] | PrincipleFailure:
    """`earl.rrm.principles.parse_points` with the reason it refused a reply named: the same JSON
    list (in a code fence or not), the same rules, the same points when it accepts."""
    if not isinstance(text, str):
        return PrincipleFailure("malformed", f"expected text, got {type(text).__name__}")
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = fence.group(1) if fence else text
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return PrincipleFailure("malformed", "no JSON list", text)
    try:
        items = json.loads(body[start : end + 1])
    except json.JSONDecodeError as e:
        return PrincipleFailure("malformed", f"not JSON ({e.msg})", text)
    if not isinstance(items, list):
        return PrincipleFailure("malformed", "not a JSON list", text)
    points = []
    for k, it in enumerate(items, 1):
        if not isinstance(it, dict) or it.get("category") not in CATEGORIES:
            return PrincipleFailure("malformed", f"item {k}: no category among {', '.join(CATEGORIES)}", text)
        q = it.get("question")
        if not isinstance(q, str) or not q.strip():
            return PrincipleFailure("malformed", f"item {k}: no question", text)
        points.append(EvalPoint(q.strip(), it["category"]))
    return _check_counts(points, text)


_NUMBERED = re.compile(r"(?:^|\s)(\d{1,2})\s*[.)]\s*\(\s*([a-z]+)\s*\)\s*", re.I)


def points_to_json(text: str) -> str | PrincipleFailure:
    """The numbered form (`1. (instruction) question 2. (quality) question ...`, as
    `earl.rrm.verifier.points_text` writes it) as `parse_points`' JSON list; a failure when the
    numbers do not run 1, 2, 3, ... or a question is empty."""
    found = list(_NUMBERED.finditer(text))
    if not found:
        return PrincipleFailure("malformed", "no numbered point `1. (category) question`", text)
    if text[: found[0].start()].strip():
        return PrincipleFailure("malformed", "text before point 1", text)
    items = []
    for k, m in enumerate(found):
        if int(m.group(1)) != k + 1:
            return PrincipleFailure("malformed", f"point {k + 1} is numbered {m.group(1)}", text)
        end = found[k + 1].start() if k + 1 < len(found) else len(text)
        items.append({"question": text[m.end() : end].strip(), "category": m.group(2).lower()})
    return json.dumps(items)


def read_numbered_points(text: str, finished: bool = True) -> list[EvalPoint] | PrincipleFailure:
    """The points of a unified writer's reply, read through `points_to_json` and `read_points`."""
    if not finished:
        return PrincipleFailure("unfinished", f"no end of reply within {MAX_WRITER_TOKENS} tokens", text)
    as_json = points_to_json(text)
    if isinstance(as_json, PrincipleFailure):
        return as_json
    got = read_points(as_json)
    return got if isinstance(got, list) else PrincipleFailure(got.kind, got.detail, text)


def writer_prompt(layout, instruction: str, source_codes: torch.Tensor) -> list[int]:
    return [layout.ids.bos, *layout.encode_text(f"{PROMPT_PREFIX} {instruction}"), *layout.image_tokens(source_codes)]


class UnifiedPrincipleWriter:
    """Principles from earl's own token model (`earl train`-style directory written by `earl.train.writer`)."""

    name = "unified"

    def __init__(self, editor: UnifiedEditor, max_new_tokens: int = MAX_WRITER_TOKENS, batch_size: int = 32):
        self.editor, self.max_new_tokens, self.batch_size = editor.eval(), max_new_tokens, batch_size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", **kw) -> UnifiedPrincipleWriter:
        return cls(UnifiedEditor.from_pretrained(Path(path), device=device), **kw)

    @torch.no_grad()
    def write_texts(self, sources: list[Image.Image], instructions: list[str]) -> list[tuple[str, bool]]:
        """(decoded reply, ended within the budget) per request, greedy."""
        ed, out = self.editor, []
        eos, pad = ed.layout.ids.eos, ed.layout.ids.pad
        for s in range(0, len(sources), self.batch_size):
            ims, ins = sources[s : s + self.batch_size], instructions[s : s + self.batch_size]
            codes = ed.encode_images([ed.preprocess(im)[0] for im in ims])
            batch = ed.layout.pad_prompts([writer_prompt(ed.layout, i, c.cpu()) for i, c in zip(ins, codes)])
            batch = {k: v.to(ed.device) for k, v in batch.items()}
            new, _ = greedy_text(ed.backbone, batch, self.max_new_tokens, eos, pad, keep_logits=False)
            for row in new.tolist():
                finished = eos in row
                row = row[: row.index(eos)] if finished else row
                out.append((ed.text_tokenizer.decode(row, skip_special_tokens=True), finished))
        return out

    def write(self, sources: list[Image.Image], instructions: list[str]) -> list[list[EvalPoint] | PrincipleFailure]:
        return [read_numbered_points(t, done) for t, done in self.write_texts(sources, instructions)]


class ChatPrincipleWriter:
    """Principles from a multimodal chat LLM (`llm_points`'s prompt and cache), with named failures.

    `backend`: any `earl.verify.chat` backend, or `base_url` (+ `model`) of an OpenAI-compatible
    server. A failure is not cached, so a later run asks again."""

    name = "chat"

    def __init__(self, backend=None, base_url: str | None = None, model: str | None = None,
                 cache: str | os.PathLike | None = None, retries: int = 2, max_tokens: int = 800,
                 concurrency: int = 16, timeout: float = 120.0):
        if (backend is None) == (base_url is None):
            raise EarlError("ChatPrincipleWriter: give exactly one of backend or base_url")
        self.backend = backend or build_chat_backend("openai", base_url=base_url, model=model, timeout=timeout,
                                                     max_connections=concurrency)
        self.cache = PrincipleCache(cache) if cache else None
        self.retries, self.max_tokens, self.concurrency = retries, max_tokens, concurrency

    def write(self, sources: list[Image.Image], instructions: list[str]) -> list[list[EvalPoint] | PrincipleFailure]:
        out: list = [None] * len(sources)
        todo = []
        for i, (im, ins) in enumerate(zip(sources, instructions)):
            hit = self._cached(im, ins)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        for i, got in zip(todo, self._ask([sources[i] for i in todo], [instructions[i] for i in todo])):
            out[i] = got
            if isinstance(got, list) and self.cache is not None:
                self.cache.get(sources[i], instructions[i], lambda got=got: got)
        return out

    def _cached(self, image, instruction) -> list[EvalPoint] | None:
        return None if self.cache is None else self.cache.get(image, instruction, lambda: None)

    def _ask(self, sources, instructions) -> list[list[EvalPoint] | PrincipleFailure]:
        def parse(text):
            got = read_points(text)
            return got if isinstance(got, list) else None

        async def run():
            sem = asyncio.Semaphore(self.concurrency)

            async def one(image, instruction):
                async with sem:
                    call = await chat_with_retries(self.backend, decompose_messages(image, instruction), parse,
                                                   max_tokens=self.max_tokens, temperature=0.0,
                                                   retries=self.retries, backoff=1.0)
                if call.value is not None:
                    return call.value
                got = read_points(call.raw) if call.raw else None
                if isinstance(got, PrincipleFailure):
                    return got
                return PrincipleFailure("writer_error", call.error or "no reply", call.raw or "")

            try:
                return await asyncio.gather(*(one(im, ins) for im, ins in zip(sources, instructions)))
            finally:
                await self.backend.aclose()

        return list(asyncio.run(run())) if sources else []


def points_record(points: list[EvalPoint] | PrincipleFailure) -> dict:
    """A written result as JSON: the points, or the failure."""
    if isinstance(points, PrincipleFailure):
        return {"failure": points.kind, "detail": points.detail, "raw": points.raw}
    return {"points": [asdict(p) for p in points]}
