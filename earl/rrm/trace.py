"""The reward model's output contract: one verdict per principle, then a score in a tag.

    1. yes - the background is blue.
    2. no - the red circle at row 1, column 2 is missing.
    ...
    10. yes - the shapes are cleanly drawn.
    <score>6.5</score>

Each line: the point's number, `yes` or `no` (an uncertain point is answered `no`), a short reason.
The reason may also come first, with the verdict closing the line (`2. row 1, column 2 holds nothing
- no`): that is the order earl's own models are trained to write on ShapesEdit, because a verdict
written after its reason is conditioned on what the model said it saw (the point of a reasoning
verifier), while a verdict written first must be decided blind and the reason merely follows it.
The score is in [0, 10] (decimals allowed); it may deduct more than the share of failed points
(e.g. changes to things no point mentions, or an output nearly identical to the source, which
scores 0). `parse_trace` accepts exactly this and small variations (markdown bullets or bold, a
colon or dash around the verdict, "Yes"/"No"), and returns None for anything it would have to guess:
a missing, repeated or out-of-range point number, a missing or out-of-range score. A None is a
failed judgement: masked out of training and counted, never a zero.

A trace may open with lines that are not verdicts (a `preface`): earl's ShapesEdit models can be
trained to first describe the edited image cell by cell (`earl.rrm.coldstart.scene_scan`), so that
each point's reason is copied from a description written position by position rather than looked
up in the image from the question's wording. The parser skips such lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERDICT_FIRST = re.compile(r"^[\s>*-]*\**\s*(\d{1,2})\s*[.)]\s*\**\s*(yes|no)\b\**\s*[:\-–—,]?\s*(.*)$", re.I)
# the reason first, then a separator and the verdict ending the line
_VERDICT_LAST = re.compile(r"^[\s>*-]*\**\s*(\d{1,2})\s*[.)]\s*(.*?)\s*(?:[:\-–—,=>→]+)\s*\**(yes|no)\**\s*\.?\s*$",
                           re.I)
_SCORE = re.compile(r"<score>\s*([-+]?\d+(?:\.\d+)?)\s*</score>", re.I)


@dataclass
class Verdicts:
    passed: list[bool]  # one per point, in order
    reasons: list[str]
    score: float  # 0-10

    @property
    def point_average(self) -> float:
        """Mean of the verdicts on the 0-10 scale (the score before any extra deduction)."""
        return 10.0 * sum(self.passed) / len(self.passed)


def format_trace(passed: list[bool], reasons: list[str], score: float, reason_first: bool = False,
                 preface: str | None = None) -> str:
    """The contract's text; `reason_first` writes `k. reason - yes` instead of `k. yes - reason`;
    `preface` (one line, no verdicts) comes first."""
    if reason_first:
        lines = [f"{i}. {reason} - {'yes' if ok else 'no'}" for i, (ok, reason) in enumerate(zip(passed, reasons), 1)]
    else:
        lines = [f"{i}. {'yes' if ok else 'no'} - {reason}" for i, (ok, reason) in enumerate(zip(passed, reasons), 1)]
    if preface is not None:
        if "\n" in preface or _verdict_line(preface) is not None:
            raise ValueError(f"format_trace: the preface must be one line that is not a verdict, got {preface!r}")
        lines.insert(0, preface)
    return "\n".join(lines) + f"\n<score>{score:g}</score>"


def _verdict_line(line: str) -> tuple[int, bool, str] | None:
    """(point number, verdict, reason) of one line in either order, or None for any other line.
    A line ending in a verdict is read reason-first, so a reason that starts with "no" ("no object
    outside the expected cells - yes") is not mistaken for the verdict."""
    m = _VERDICT_LAST.match(line)
    if m and m.group(2).strip("* "):
        return int(m.group(1)), m.group(3).lower() == "yes", m.group(2).strip().strip("*").strip()
    m = _VERDICT_FIRST.match(line)
    if m:
        return int(m.group(1)), m.group(2).lower() == "yes", m.group(3).strip().strip("*").strip()
    return None


def reason_span(line: str) -> tuple[int, int] | None:
    """Where the reason lies in a reason-first line (`k. reason - yes`), read by the same grammar as
    `parse_trace`; None for any other line."""
    m = _VERDICT_LAST.match(line)
    return m.span(2) if m and m.group(2).strip("* ") else None


def parse_trace(text: str, n_points: int) -> Verdicts | None:
    """The verdicts and score of a reply about `n_points` points, or None if it does not follow the contract."""
    if not isinstance(text, str):
        return None
    found: dict[int, tuple[bool, str]] = {}
    for line in text.splitlines():
        if (got := _verdict_line(line)) is None:
            continue
        i, ok, reason = got
        if not 1 <= i <= n_points or i in found:
            return None
        found[i] = (ok, reason)
    scores = _SCORE.findall(text)
    if len(found) != n_points or len(scores) != 1:
        return None
    score = float(scores[0])
    if not 0.0 <= score <= 10.0:
        return None
    return Verdicts([found[i][0] for i in range(1, n_points + 1)], [found[i][1] for i in range(1, n_points + 1)],
                    score)
