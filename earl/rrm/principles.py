"""Principle decomposition: (source image, instruction) -> exactly 10 yes/no evaluation points.

Edit-R1's reasoning reward model judges an edit against a fixed list of points computed once per
(source, instruction), so every candidate edit is judged against the same questions: 3-4 about
following the instruction, 3-4 about preserving what should not change, 2-3 about image quality.

On ShapesEdit the points come from the oracle's scene graphs, exactly, each with a machine check
(`check`) that `verify_point` evaluates on a parsed edited image; that gives ground-truth verdicts
for cold-start traces and for measuring a reward model per principle. Questions are phrased with
varied templates (seeded), so a model cannot key on one wording.

`PrincipleCache` stores the points on disk keyed by (hash of the source image, instruction).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from earl.io import atomic_write_json, read_json
from earl.shapes.oracle import CLEAN_MIN, IMPURITY_MAX, STRAY_MAX
from earl.shapes.program import cell_name
from earl.shapes.scene import Scene, ShapeObject
from earl.verify.chat import chat_with_retries

CATEGORIES = ("instruction", "preservation", "quality")
N_POINTS = 10
FLAT_BACKGROUND_MAX = 50.0  # RGB distance of the border median from the named background colour


@dataclass(frozen=True)
class EvalPoint:
    question: str
    category: str  # one of CATEGORIES
    check: dict = field(default_factory=dict)  # ShapesEdit: what `verify_point` tests; {} for LLM-made points

    def public(self) -> dict:
        """What the reward model sees: the question and its category, never the check."""
        return {"question": self.question, "category": self.category}


def _pick(rng: random.Random, templates: list[str], **kw) -> str:
    return rng.choice(templates).format(**kw)


def _instruction_points(src: Scene, tgt: Scene, rng: random.Random) -> tuple[list[EvalPoint], list[EvalPoint]]:
    """(primary points, extra points): the required changes, then their attributes and consequences."""
    primary, extra = [], []
    if src.background != tgt.background:
        c = tgt.background
        primary.append(EvalPoint(_pick(rng, ["Is the background {c}?", "Has the background been changed to {c}?"], c=c),
                                 "instruction", {"kind": "background", "value": c}))
        extra.append(EvalPoint(f"Is the background no longer {src.background}?", "instruction",
                               {"kind": "background_not", "value": src.background}))
    for r in range(tgt.grid):
        for col in range(tgt.grid):
            want, had = tgt.object_at(r, col), src.object_at(r, col)
            if want == had:
                continue
            where = cell_name((r, col))
            if want is None:
                primary.append(EvalPoint(_pick(rng, ["Is {w} empty?", "Has the object at {w} been removed?"], w=where),
                                         "instruction", {"kind": "empty", "cell": [r, col]}))
                extra.append(EvalPoint(f"Is the {had.describe()} gone from {where}?", "instruction",
                                       {"kind": "not_object", "cell": [r, col], "value": asdict(had)}))
                continue
            primary.append(EvalPoint(_pick(rng, ["Is there a {d} at {w}?", "Does {w} now hold a {d}?"],
                                           d=want.describe(), w=where), "instruction",
                                     {"kind": "object", "cell": [r, col], "value": asdict(want)}))
            for attr in ("color", "shape", "size"):
                v = getattr(want, attr)
                article = "a " if attr == "shape" else ""  # "a circle", but "red" and "large"
                extra.append(EvalPoint(_pick(rng, ["Is the object at {w} {art}{v}?", "Is the {a} of the object at {w} {v}?"],
                                             w=where, v=v, art=article, a="colour" if attr == "color" else attr),
                                       "instruction", {"kind": "attribute", "cell": [r, col], "attr": attr, "value": v}))
    if len(src.objects) != len(tgt.objects):
        n = len(tgt.objects)
        extra.append(EvalPoint("Is there exactly one object in the image?" if n == 1 else
                               f"Are there exactly {n} objects in the image?", "instruction",
                               {"kind": "count", "value": n}))
    return primary, extra


def _preservation_points(src: Scene, tgt: Scene, rng: random.Random) -> list[EvalPoint]:
    out = [EvalPoint(_pick(rng, ["Are there no extra objects?", "Is nothing added beyond what was asked?"]),
                     "preservation", {"kind": "no_extra"})]
    if src.background == tgt.background:
        out.append(EvalPoint(_pick(rng, ["Is the {c} background unchanged?", "Does the background stay {c}?"],
                                   c=tgt.background), "preservation", {"kind": "background", "value": tgt.background}))
    kept = [o for o in src.objects if tgt.object_at(*o.cell) == o]
    rng.shuffle(kept)
    for o in kept:
        out.append(EvalPoint(_pick(rng, ["Is the {d} at {w} unchanged?", "Does {w} still hold the {d}?"],
                                   d=o.describe(), w=cell_name(o.cell)), "preservation",
                             {"kind": "object", "cell": list(o.cell), "value": asdict(o)}))
    if len(src.objects) == len(tgt.objects):
        n = len(tgt.objects)
        out.append(EvalPoint(f"Is the number of objects still {n}?", "preservation", {"kind": "count", "value": n}))
    empty = [(r, c) for r in range(tgt.grid) for c in range(tgt.grid)
             if src.object_at(r, c) is None and tgt.object_at(r, c) is None]
    rng.shuffle(empty)
    out += [EvalPoint(f"Is {cell_name(cell)} still empty?", "preservation", {"kind": "empty", "cell": list(cell)})
            for cell in empty]
    return out


QUALITY = [
    EvalPoint("Is the image free of stray colours and blobs?", "quality", {"kind": "quality", "which": "stray"}),
    EvalPoint("Are the shapes cleanly drawn?", "quality", {"kind": "quality", "which": "clean"}),
    EvalPoint("Is the background one flat colour?", "quality", {"kind": "quality", "which": "flat_background"}),
]


def shapes_points(source: Scene, target: Scene, seed: int = 0) -> list[EvalPoint]:
    """Exactly 10 points: 4 instruction + 3 preservation + 3 quality, or 3 + 4 + 3 when the edit
    needs fewer instruction checks. Short instruction lists are filled with their extra checks and,
    if still short, with rephrasings of the main ones."""
    rng = random.Random(seed)
    primary, extra = _instruction_points(source, target, rng)
    inst = primary + extra
    k = 0
    while len(inst) < 3 and primary:  # e.g. a background change: ask the main question another way too
        p = primary[k % len(primary)]
        inst.append(EvalPoint(f"Does the edit do what was asked, namely: {p.question[0].lower()}{p.question[1:]}",
                              "instruction", p.check))
        k += 1
    n_inst = min(4, len(inst))
    keep = primary + rng.sample(inst[len(primary):], max(0, n_inst - len(primary)))
    inst = keep[:n_inst]
    n_pres = N_POINTS - n_inst - len(QUALITY)
    pres = _preservation_points(source, target, rng)[:n_pres]
    points = inst + pres + QUALITY
    if len(points) != N_POINTS:
        raise ValueError(f"could not make {N_POINTS} points for this edit (got {len(points)})")
    return points


def point_pool(source: Scene, target: Scene) -> list[dict]:
    """Every check `shapes_points` could ask about for this edit, whatever its seed: the ten it
    writes are drawn from these (which kept objects and empty cells, which extra instruction checks)."""
    primary, extra = _instruction_points(source, target, random.Random(0))
    pres = _preservation_points(source, target, random.Random(0))
    return [p.check for p in primary + extra + pres + QUALITY]


def verify_point(point: EvalPoint, source: Scene, target: Scene, parsed) -> bool:
    """The ground-truth verdict of a ShapesEdit point on a parsed edited image (`earl.shapes.oracle.parse_scene`)."""
    c, found = point.check, parsed.scene
    kind = c.get("kind")
    if kind == "background":
        return found.background == c["value"]
    if kind == "background_not":
        return found.background != c["value"]
    if kind == "empty":
        return found.object_at(*c["cell"]) is None
    if kind == "object":
        return found.object_at(*c["cell"]) == ShapeObject(**c["value"])
    if kind == "not_object":
        return found.object_at(*c["cell"]) != ShapeObject(**c["value"])
    if kind == "attribute":
        got = found.object_at(*c["cell"])
        return got is not None and getattr(got, c["attr"]) == c["value"]
    if kind == "count":
        return len(found.objects) == c["value"]
    if kind == "no_extra":
        return all(source.object_at(*o.cell) is not None or target.object_at(*o.cell) is not None
                   for o in found.objects)
    if kind == "quality":
        which = c["which"]
        if which == "stray":
            return parsed.stray_fraction <= STRAY_MAX and parsed.impurity_fraction <= IMPURITY_MAX
        if which == "clean":
            return parsed.cleanliness >= CLEAN_MIN
        if which == "flat_background":
            return parsed.background_distance <= FLAT_BACKGROUND_MAX
    raise ValueError(f"point {point.question!r} has no ShapesEdit check")


class PrincipleCache:
    """Points per (source image, instruction), one JSON file each, so every candidate is judged alike."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(image: Image.Image, instruction: str) -> str:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        h = hashlib.sha256(buf.getvalue())
        h.update(b"\0" + instruction.strip().encode())
        return h.hexdigest()[:32]

    def get(self, image: Image.Image, instruction: str, make) -> list[EvalPoint] | None:
        """The cached points, or `make()`'s, which are cached unless `make` failed (returned None)."""
        path = self.root / f"{self.key(image, instruction)}.json"
        if path.is_file():
            return [EvalPoint(**p) for p in read_json(path)["points"]]
        points = make()
        if points is not None:
            atomic_write_json(path, {"instruction": instruction, "points": [asdict(p) for p in points]})
        return points


# ---------------------------------------------------------------------------------------------
# Real images: principles from a multimodal LLM.

DECOMPOSE_PROMPT = """\
You will see an image and an instruction for editing it. Before anyone looks at an edited \
version, write the checklist a careful reviewer would use to decide whether an edit is good.

Write exactly 10 yes/no questions about the edited image, each answerable by looking at it, where \
"yes" always means the edit is good on that point:
- 3 or 4 questions of category "instruction": did the edit do what was asked (the right object, \
the right change, the right place, amount or attribute)?
- 3 or 4 questions of category "preservation": did everything the instruction does not mention \
stay as it was (other objects, people's identity, background, layout, text)?
- 2 or 3 questions of category "quality": is the result clean and natural (no artifacts, no \
distortions, consistent lighting and edges)?

Instruction: {instruction}

Reply with only a JSON list, no other text:
[{{"question": "...", "category": "instruction"}}, ...]"""

_COUNTS = {"instruction": (3, 4), "preservation": (3, 4), "quality": (2, 3)}


def parse_points(text: str) -> list[EvalPoint] | None:
    """Exactly 10 points with 3-4 / 3-4 / 2-3 per category from a reply, or None."""
    if not isinstance(text, str):
        return None
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = fence.group(1) if fence else text
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        items = json.loads(body[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or len(items) != N_POINTS:
        return None
    points = []
    for it in items:
        if not isinstance(it, dict) or it.get("category") not in CATEGORIES:
            return None
        q = it.get("question")
        if not isinstance(q, str) or not q.strip():
            return None
        points.append(EvalPoint(q.strip(), it["category"]))
    counts = {c: sum(p.category == c for p in points) for c in CATEGORIES}
    if any(not lo <= counts[c] <= hi for c, (lo, hi) in _COUNTS.items()):
        return None
    return points


def decompose_messages(source: Image.Image, instruction: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": source},
                                         {"type": "text", "text": DECOMPOSE_PROMPT.format(instruction=instruction)}]}]


def llm_points(backend, source: Image.Image, instruction: str, cache: PrincipleCache | None = None,
               retries: int = 2, max_tokens: int = 800) -> list[EvalPoint] | None:
    """Principles from a multimodal LLM (any `earl.verify.chat` backend), cached; None if every try failed."""
    def ask():
        async def run():
            try:
                return await chat_with_retries(backend, decompose_messages(source, instruction), parse_points,
                                               max_tokens=max_tokens, temperature=0.0, retries=retries, backoff=1.0)
            finally:
                await backend.aclose()

        return asyncio.run(run()).value

    return ask() if cache is None else cache.get(source, instruction, ask)  # a failure is not cached
