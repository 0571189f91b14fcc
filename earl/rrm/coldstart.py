"""Cold-start data for the reasoning reward model on ShapesEdit: candidates, verdicts, traces.

Edit-R1 cold-starts its reward model with SFT on verified traces: many candidate edits per
(source, instruction), each judged point by point by a stronger verifier, keeping the trace with
the best per-point accuracy. On ShapesEdit the stronger verifier is the exact oracle, so each
candidate's trace is written from the oracle's verdicts (per-point accuracy 1 by construction);
`select_trace` implements the selection rule for when traces come from a fallible writer.

Candidates per sample cover every kind of failure a point can catch:
    the target (a perfect edit), the source (nothing done: scored 0), half-done edits (one required
    change undone), a wrong colour where the edit happened, an extra object, a preserved object
    removed, the wrong background, and degraded renders (blur, stray blobs) for the quality points.
Each candidate goes through the image tokenizer (encode, decode) before it is judged, so the
verdicts describe exactly the image the reward model will see.

With `scan`, each trace first describes the edited image as the oracle parses it, the background
and then every cell in reading order (`scene_scan`): `seen : background white ; r1c1 nothing ; r1c2 small
pink triangle ; ...`. A small causal model can write that position by position (each cell's two-by-two
block of codes comes next in a fixed order), and each point's reason then copies from text it wrote
instead of locating a cell from the question's words, which the models without it never learned
(docs/REWARD_MODELS.md).

With `expect` as well, each point whose check names what should be there states it after what
was seen: `3. r1c2 nothing , expected small red circle - no`. The quoted models copied the question's
expectation into their reasons instead of the scan's entry (85% of points pass, so the two
mostly agree); with both written side by side, the verdict is a comparison of two adjacent
phrases, and the observation has a place of its own that only the scan can fill.

Score rule (the trace's final number): 10 x the share of passed points, minus 2 for every change
to an object or cell that no point asks about (a hallucinated edit), 0 for an output that
matches the source, clipped to [0, 10].
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

from earl.rrm.principles import EvalPoint, shapes_points, verify_point
from earl.rrm.trace import format_trace
from earl.shapes.edits import cell_name, make_sample
from earl.shapes.oracle import parse_scene
from earl.shapes.render import render
from earl.shapes.scene import BACKGROUNDS, PALETTE, Scene, ShapeObject

UNMENTIONED_PENALTY = 2.0
SCAN_PREFIX = "seen :"


def scene_scan(scene: Scene) -> str:
    """One line describing a (parsed) scene: the background, then every cell in reading order."""
    cells = [f"r{r + 1}c{c + 1} {o.describe() if (o := scene.object_at(r, c)) else 'nothing'}"
             for r in range(scene.grid) for c in range(scene.grid)]
    return f"{SCAN_PREFIX} background {scene.background} ; " + " ; ".join(cells)


_CELL_REASON = re.compile(r"^\s*row (\d+)\s*,\s*column (\d+) holds (?:an? )?(.+?)\s*$", re.I)
_BACKGROUND_REASON = re.compile(rf"^\s*the background is ({'|'.join(map(re.escape, BACKGROUNDS))})\s*\.?\s*$", re.I)


def scan_form(reason: str) -> str:
    """A reason in the scan's own words: "row 2, column 1 holds a small red circle" -> "r2c1 small red
    circle", "the background is white" -> "background white"; any other reason unchanged.

    Quoted this way (`data.quote_scan`), a cell point's reason repeats a scan entry token for token,
    so writing it is a copy of what followed the same cell token earlier (what attention heads do
    most easily) rather than a lookup from "row 2, column 1" to "r2c1". Also the form in which
    reasons of either style are compared (`earl.rrm.rewardbench`)."""
    if m := _CELL_REASON.match(reason):
        return f"r{m.group(1)}c{m.group(2)} {m.group(3)}"
    if m := _BACKGROUND_REASON.match(reason):
        return f"background {m.group(1)}"
    return reason


EXPECT_SEPARATOR = " , expected "


def expectation(point: EvalPoint) -> str | None:
    """What a point's check says should be seen, in the scan's words ("small red circle", "nothing",
    "not white", "3"), or None for checks with no single expected content (extra objects, quality)."""
    c = point.check
    kind = c.get("kind")
    if kind == "background":
        return c["value"]
    if kind == "background_not":
        return f"not {c['value']}"
    if kind == "empty":
        return "nothing"
    if kind == "object":
        return ShapeObject(**c["value"]).describe()
    if kind == "not_object":
        return f"not {ShapeObject(**c['value']).describe()}"
    if kind in ("attribute", "count"):
        return str(c["value"])
    return None


def split_expectation(reason: str) -> tuple[str, str | None]:
    """An `expect` reason's two phrases: (what was seen, what the point expects), or (reason, None)
    when it has no `, expected ...` tail."""
    m = re.match(r"^(.*?)\s*,\s*expected\b\s*(.*)$", reason.strip(), flags=re.I)
    return (reason, None) if m is None else (m[1], m[2])


def observed_part(reason: str) -> str:
    """A reason without its `, expected ...` tail (`expect` traces): what the model says it saw."""
    return split_expectation(reason)[0]


def phrase_verdict(kind: str, reason: str) -> bool | None:
    """The verdict an `expect` reason implies by comparing its two phrases, or None for a reason
    without an expectation: equal entries for object, empty and background checks
    ("r4c2 nothing , expected small green circle" -> False), different ones for `not` checks, the
    wanted word among those seen for attribute and count checks."""
    seen, wanted = split_expectation(reason)
    if not wanted:
        return None
    words = re.findall(r"\w+", seen.lower())
    want = re.findall(r"\w+", wanted.lower())
    if kind in ("object", "empty", "background", "not_object", "background_not"):
        entry = words[1:] if words[:1] == ["background"] or (words and re.fullmatch(r"r\d+c\d+", words[0])) else words
        if kind in ("not_object", "background_not"):
            return want[:1] == ["not"] and entry != want[1:]
        return entry == want
    if kind in ("attribute", "count"):
        return len(want) == 1 and want[0] in words
    return None


def read_scan(text: str) -> dict[str, str] | None:
    """The entries of the scan line in a (decoded) trace, {"background": "white", "r1c1": "nothing", ...},
    or None when the text has no scan line. Entries are lower-cased, spaces normalised."""
    line = next((ln for ln in text.splitlines() if ln.strip().lower().startswith(SCAN_PREFIX)), None)
    if line is None:
        return None
    out = {}
    for part in line.strip()[len(SCAN_PREFIX):].split(";"):
        words = part.lower().split()
        if words:
            out.setdefault(words[0], " ".join(words[1:]))
    return out


@dataclass
class Candidate:
    kind: str  # "target", "source", "undo", "wrong_color", "extra", "drop", "background", "blur", "blob"
    scene: Scene | None  # the scene that was rendered (None for pixel-level degradations of the target)
    image: Image.Image


def candidates(source: Scene, target: Scene, rng: random.Random) -> list[Candidate]:
    out = [Candidate("target", target, render(target)), Candidate("source", source, render(source))]
    changed = [(r, c) for r in range(target.grid) for c in range(target.grid)
               if source.object_at(r, c) != target.object_at(r, c)]
    if len(changed) > 1 or (changed and source.background != target.background):
        r, c = rng.choice(changed)  # undo one of the required changes
        objs = [o for o in target.objects if o.cell != (r, c)] + ([source.object_at(r, c)] if source.object_at(r, c) else [])
        out.append(Candidate("undo", target.with_objects(objs), None))
    edited = [o for o in target.objects if source.object_at(*o.cell) != o]
    if edited:
        o = rng.choice(edited)
        color = rng.choice([c for c in PALETTE if c != o.color])
        out.append(Candidate("wrong_color", target.with_objects([x if x != o else o.replace(color=color)
                                                                for x in target.objects]), None))
    free = [cell for cell in target.free_cells() if source.object_at(*cell) is None]
    if free:
        r, c = rng.choice(free)
        extra = rng.choice(target.objects or source.objects).replace(row=r, col=c) if (target.objects or source.objects) \
            else None
        if extra is not None:
            out.append(Candidate("extra", target.with_objects([*target.objects, extra]), None))
    kept = [o for o in target.objects if source.object_at(*o.cell) == o]
    if kept:
        o = rng.choice(kept)
        out.append(Candidate("drop", target.with_objects([x for x in target.objects if x != o]), None))
    bg = rng.choice([b for b in BACKGROUNDS if b != target.background])
    out.append(Candidate("background", target.with_background(bg), None))
    for cand in out:
        if cand.image is None:
            cand.image = render(cand.scene)
    clean = render(target)
    out.append(Candidate("blur", None, clean.filter(ImageFilter.GaussianBlur(2.5))))
    blob = clean.copy()
    d = ImageDraw.Draw(blob)
    x, y = rng.randrange(4, blob.width - 12), rng.randrange(4, blob.height - 12)
    d.ellipse([x, y, x + 7, y + 5], fill=tuple(PALETTE[rng.choice(list(PALETTE))]))
    out.append(Candidate("blob", None, blob))
    return out


def _unmentioned_changes(points: list[EvalPoint], source: Scene, target: Scene, found: Scene) -> int:
    """Cells whose content differs from what the edit should give, and that no point names."""
    named = {tuple(p.check["cell"]) for p in points if "cell" in p.check}
    if any(p.check.get("kind") == "no_extra" for p in points):  # extra objects are covered by that point
        named |= {(r, c) for r in range(target.grid) for c in range(target.grid)
                  if source.object_at(r, c) is None and target.object_at(r, c) is None}
    return sum(1 for r in range(target.grid) for c in range(target.grid)
               if (r, c) not in named and found.object_at(r, c) != target.object_at(r, c))


def _reason(point: EvalPoint, found: Scene, parsed, ok: bool) -> str:
    c = point.check
    kind = c.get("kind")
    if "cell" in c:
        got = found.object_at(*c["cell"])
        where = cell_name(tuple(c["cell"]))
        return f"{where} holds {'a ' + got.describe() if got else 'nothing'}"
    if kind in ("background", "background_not"):
        return f"the background is {found.background}"
    if kind == "count":
        return f"there {'is' if len(found.objects) == 1 else 'are'} {len(found.objects)} object(s)"
    if kind == "no_extra":
        return "no object outside the expected cells" if ok else "an unexpected object appeared"
    if kind == "quality":
        return {"stray": "no stray colours" if ok else "stray colour blobs",
                "clean": "clean shapes" if ok else "shapes are smeared or deformed",
                "flat_background": "flat background" if ok else "the background is uneven"}[c["which"]]
    return "checked"


def judge_parsed(points: list[EvalPoint], source: Scene, target: Scene, parsed) -> tuple[list[bool], list[str], float]:
    """The oracle's verdicts on one (tokenizer-reconstructed) candidate image, as `parse_scene` read it,
    their reasons, and the score."""
    passed = [verify_point(p, source, target, parsed) for p in points]
    reasons = [_reason(p, parsed.scene, parsed, ok) for p, ok in zip(points, passed)]
    return passed, reasons, score_rule(passed, points, source, target, parsed.scene)


def score_rule(passed: list[bool], points: list[EvalPoint], source: Scene, target: Scene, found: Scene) -> float:
    """A trace's final number from its verdicts: 10 x the share passed, minus `UNMENTIONED_PENALTY` for
    each change no point names, 0 when the output is the source, clipped to [0, 10]."""
    score = 10.0 * sum(passed) / len(passed) - UNMENTIONED_PENALTY * _unmentioned_changes(points, source, target, found)
    if found == source and source != target:
        score = 0.0  # nothing was done
    return round(min(10.0, max(0.0, score)), 1)


def lenient_verdicts(passed: list[bool], miss: float, rng: random.Random) -> list[bool]:
    """The verdicts of a lenient verifier that passes each failing point with probability `miss`
    (passing points stay passed).

    Edit-R1's cold-start traces are verified by a VLM, which makes mistakes of its own (a common one
    is approving what it is asked about); its preference pairs come from people. On ShapesEdit the oracle is
    exact, and GCPO from a cold start taught by it did not raise it (docs/REWARD_MODELS.md). With
    `miss` > 0 (`data.verifier_miss`) the cold start learns from such a fallible verifier while the
    pairs keep the oracle's truth, the two sources with different errors that the paper has."""
    if not 0.0 <= miss <= 1.0:
        raise ValueError(f"verifier miss rate must be in [0, 1], got {miss}")
    return [ok or rng.random() < miss for ok in passed]


def oracle_trace(points: list[EvalPoint], source: Scene, target: Scene, image: Image.Image,
                 reason_first: bool = True, scan: bool = False, quote_scan: bool = False, expect: bool = False,
                 miss: float = 0.0, rng: random.Random | None = None) -> tuple[str, list[bool], float, list[bool]]:
    """The oracle's trace on a candidate image, its written verdicts and score, and the oracle's own
    verdicts; `scan` opens it with `scene_scan`, `quote_scan` writes the reasons in the scan's words
    (`scan_form`), and `expect` follows each with what its point expects (`expectation`).

    With `miss` > 0 the written verdicts are a lenient verifier's (`lenient_verdicts`, drawn from
    `rng`) and the score follows them (`score_rule`); the reasons and the scan still say what the
    oracle saw, so a missed failure reads `3. r1c2 nothing , expected small red circle - yes`: the
    image seen right and judged wrong."""
    if quote_scan and not scan:
        raise ValueError("quote_scan needs scan: the reasons quote the scan's entries")
    if expect and not quote_scan:
        raise ValueError("expect needs quote_scan: the expectation is written in the scan's words")
    if miss and rng is None:
        raise ValueError("a verifier miss rate needs an rng to draw the misses from")
    parsed = parse_scene(image, image_size=target.image_size, grid=target.grid)
    truth, reasons, score = judge_parsed(points, source, target, parsed)
    passed = truth
    if miss:
        passed = lenient_verdicts(truth, miss, rng)
        score = score_rule(passed, points, source, target, parsed.scene)
    text = write_trace(points, parsed.scene, passed, reasons, score, reason_first, scan, quote_scan, expect)
    return text, passed, score, truth


def write_trace(points: list[EvalPoint], seen: Scene, passed: list[bool], reasons: list[str], score: float,
                reason_first: bool = True, scan: bool = False, quote_scan: bool = False, expect: bool = False) -> str:
    """A trace's text from its verdicts and the oracle's reasons (`judge_parsed`) on the scene `seen`,
    in the format a reward model was trained to write (`oracle_trace`'s flags)."""
    if quote_scan:
        reasons = [scan_form(r) for r in reasons]
    if expect:
        reasons = [r if (e := expectation(p)) is None else f"{r}{EXPECT_SEPARATOR}{e}" for p, r in zip(points, reasons)]
    preface = scene_scan(seen) if scan else None
    return format_trace(passed, reasons, score, reason_first=reason_first, preface=preface)


def select_trace(traces: list[list[bool]], reference: list[bool]) -> int:
    """Index of the trace whose verdicts agree with the reference verdicts on the most points (first of ties)."""
    if not traces:
        raise ValueError("no traces to select from")
    return max(range(len(traces)), key=lambda i: sum(a == b for a, b in zip(traces[i], reference)))


def make_examples(samples, encode, decode, seed: int = 0, reason_first: bool = True, scan: bool = False,
                  quote_scan: bool = False, expect: bool = False, verifier_miss: float = 0.0) -> list[dict]:
    """One judge example per candidate of each sample: principles, the source's and the candidate's codes,
    the oracle trace written on the candidate *as the tokenizer reconstructs it*, its verdicts and score.

    `encode(images) -> (B, h, w) codes`, `decode(codes) -> images` (the image tokenizer);
    `samples` have source_scene, target_scene and instruction (ShapesEdit `Sample`s). Traces write
    each point's reason before its verdict unless `reason_first` is False (`earl.rrm.trace`), and
    open with the oracle's cell-by-cell description of the candidate when `scan` is True, with reasons
    in the scan's words when `quote_scan` is True, each followed by its point's expectation when
    `expect` is True. With `verifier_miss` > 0 the verdicts and scores are a lenient verifier's
    (`lenient_verdicts`), drawn from their own generator so that the samples and candidates are
    those of the same seed without it; each example's `true_passed` keeps the oracle's verdicts.
    """
    rng = random.Random(seed)
    misses = random.Random(f"verifier-miss-{seed}")
    out = []
    for k, s in enumerate(samples):
        points = shapes_points(s.source_scene, s.target_scene, seed=seed * 100_003 + k)
        cands = candidates(s.source_scene, s.target_scene, rng)
        codes = encode([render(s.source_scene)] + [c.image for c in cands])
        seen = decode(codes[1:])
        for cand, c, image in zip(cands, codes[1:], seen):
            trace, passed, score, truth = oracle_trace(points, s.source_scene, s.target_scene, image, reason_first,
                                                        scan, quote_scan, expect, verifier_miss, misses)
            out.append({"sample": k, "kind": cand.kind, "instruction": s.instruction, "points": points,
                        "source_codes": codes[0], "codes": c, "trace": trace, "passed": passed, "score": score,
                        **({"true_passed": truth} if verifier_miss else {})})
    return out


def draw_examples(image_tokenizer, n: int, seed: int, image_size: int,
                  splits=("simple", "complex"), reason_first: bool = True,
                  scan: bool = False, quote_scan: bool = False, expect: bool = False,
                  verifier_miss: float = 0.0) -> tuple[list, list[dict]]:
    """`n` ShapesEdit samples drawn with `seed` (split chosen uniformly per sample) and their judge
    examples through `image_tokenizer`; returns (samples, examples)."""
    import torch

    from tokenizer import pil_to_tensor, tensor_to_pil  # here, not at the top: it loads torch

    rng = random.Random(seed)
    samples = [make_sample(rng, rng.choice(list(splits)), image_size=image_size) for _ in range(n)]

    @torch.no_grad()
    def encode(images):
        return image_tokenizer.encode(pil_to_tensor(images)).cpu()

    @torch.no_grad()
    def decode(codes):
        return tensor_to_pil(image_tokenizer.decode(codes))

    return samples, make_examples(samples, encode, decode, seed=seed, reason_first=reason_first, scan=scan,
                                    quote_scan=quote_scan, expect=expect, verifier_miss=verifier_miss)
