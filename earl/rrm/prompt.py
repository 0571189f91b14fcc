"""What the reasoning reward model reads and how its text is read back: the judge prompt of an edit,
its training sequence (with the optional loss weights against shortcut learning), and the
normalisation of decoded text back to the verdict contract of `earl.rrm.trace`.

The model is earl's own unified token model; it reads one sequence and writes the verdict text:

    <bos> "judge : {instruction} points : 1 . {question} 2 . {question} ..." [source image] [edited image]
      ->  "1 . yes - {reason} ... <score> 7 </score>" <eos>

with the images in the editor's own format (the same `EditLayout`), so the reward model is an
editor directory like any other (`UnifiedEditor`), trained by `earl train rrm-sft`. Word-level
tokenizers drop newlines and split `<score>` into pieces, so decoded text is normalised back to the
contract before parsing (`normalise_decoded`).
"""

from __future__ import annotations

import re

from earl.layout import Example
from earl.rrm.coldstart import observed_part
from earl.rrm.principles import EvalPoint
from earl.rrm.trace import reason_span


def points_text(points: list[EvalPoint]) -> str:
    return " ".join(f"{i}. ({p.category}) {p.question}" for i, p in enumerate(points, 1))


def judge_prompt(layout, instruction: str, points: list[EvalPoint], source_codes, edited_codes) -> list[int]:
    text = f"judge : {instruction} points : {points_text(points)}"
    return [layout.ids.bos, *layout.encode_text(text), *layout.image_tokens(source_codes),
            *layout.image_tokens(edited_codes)]


def judge_example(layout, instruction: str, points: list[EvalPoint], source_codes, edited_codes,
                  trace: str, passed: list[bool] | None = None, failing_point_weight: float = 1.0,
                  failing_observation_weight: float = 1.0, scan_weight: float = 1.0) -> Example:
    """One training sequence: the judge prompt, then the trace (loss on the trace only).

    Optional loss weights, for models that learn a shortcut instead of reading the image (most
    points pass, so a model can answer "yes" everywhere, copying what the question asks for as the
    reason, and still fit most of the trace); each multiplies a token's weight, so they combine:
    - `failing_point_weight`: every token of a failing point's line (reason and verdict);
    - `failing_observation_weight`: only the observation of a failing point's reason-first line (in
      `3. r1c2 nothing , expected small red circle - no`, the words `r1c2 nothing`): the part that
      must be read from the image or copied from the scan, without pushing the verdicts towards "no";
    - `scan_weight`: the opening scan line, if the trace has one.
    `passed` is needed by the first two."""
    prompt = judge_prompt(layout, instruction, points, source_codes, edited_codes)
    if failing_point_weight == failing_observation_weight == scan_weight == 1.0:
        completion = [*layout.encode_text(trace), layout.ids.eos]
        return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt))
    lines = trace.split("\n")
    preface = len(lines) - len(points) - 1  # lines before the verdicts (a scan)
    if preface not in (0, 1):
        raise ValueError(f"judge_example: the trace has {len(lines)} lines, expected {len(points)} points + the score"
                         " (+ one preface line)")
    failing = [False] * preface + [not ok for ok in (passed or [True] * len(points))] + [False]
    completion, weights = [], []
    for i, (line, fails) in enumerate(zip(lines, failing)):
        if i < preface:
            pieces = [(line, scan_weight)]
        elif fails and failing_observation_weight != 1.0:
            pieces = [(text, failing_point_weight * (failing_observation_weight if observed else 1.0))
                      for text, observed in _observation_pieces(line)]
        else:
            pieces = [(line, failing_point_weight if fails else 1.0)]
        line_ids = []
        for text, weight in pieces:
            ids = layout.encode_text(text) if text.strip() else []
            line_ids += ids
            weights += [weight] * len(ids)
        if len(pieces) > 1 and line_ids != layout.encode_text(line):
            raise ValueError(f"judge_example: the line {line!r} does not tokenize as the sum of its parts")
        completion += line_ids
    completion.append(layout.ids.eos)
    weights.append(1.0)
    return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt),
                   [0.0] * len(prompt) + weights)


def _observation_pieces(line: str) -> list[tuple[str, bool]]:
    """A reason-first verdict line cut into (text, is_observation) pieces: the number, what was seen
    (the reason without its `, expected ...` tail, `earl.rrm.coldstart.observed_part`), then the
    expectation (if any) and the verdict."""
    span = reason_span(line)
    if span is None:
        raise ValueError(f"failing_observation_weight needs reason-first lines (`k. reason - yes`), got {line!r}")
    start, end = span
    seen = observed_part(line[start:end])
    return [(line[:start], False), (seen, True), (line[start + len(seen):], False)]


def normalise_decoded(text: str) -> str:
    """Undo what a word-level tokenizer does to the contract: '< / score >', '7 . 5', one long line
    (a new line starts before a number that a verdict follows, after a verdict that a number follows, and
    after an opening scan line `seen : ...`, `earl.rrm.coldstart.scene_scan`)."""
    text = re.sub(r"<\s*(/?)\s*score\s*>", r"<\1score>", text, flags=re.I)
    text = re.sub(r"(<score>\s*\d+)\s*\.\s*(\d+)", r"\1.\2", text)
    text = re.sub(r"\s+(?=\d{1,2}\s*[.)]\s*(?:yes|no)\b)", "\n", text, flags=re.I)
    text = re.sub(r"\b(yes|no)\s+(?=\d{1,2}\s*[.)])", "\\1\n", text, flags=re.I)  # after a reason-first line
    text = re.sub(r"^(\s*seen\s*:[^\n]*?)\s+(?=1\s*[.)])", "\\1\n", text, flags=re.I)  # after a scan line
    return re.sub(r"\s*(<score>)", r"\n\1", text)
