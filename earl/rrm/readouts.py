"""Scores read from the reward model's logits rather than from the words it wrote: E[score] (the
expectation of the integer after `<score>`) and E[points] (10 x the mean P(yes) at its verdict words),
for a greedy trace's readouts and for GCPO's τ of a sampled trace (`trace_score`).
"""

from __future__ import annotations

import torch

from earl.rrm.prompt import normalise_decoded
from earl.rrm.trace import parse_trace

LOGIT_READOUTS = ("expected_score", "expected_points")  # read from the logits, beside the written score

def _verdict_words(layout) -> dict:
    """Token ids the verdict positions are found by (encoded once per call, not once per trace)."""
    yes, no = layout.encode_text("yes")[0], layout.encode_text("no")[0]
    return {"yes": yes, "no": no, "yes_no": {yes, no},
            "opening": layout.encode_text("<score>"),
            "marks": {layout.encode_text(".")[0], layout.encode_text(")")[0]},
            "numbers": {layout.encode_text(str(n))[0] for n in range(1, 100)}}


def verdict_positions(layout, ids: list[int], words: dict | None = None) -> list[int]:
    """Indices in `ids` of the verdict words. A trace is in one of the contract's two orders: the
    verdict closes each point's line (a `yes`/`no` right before the next `k.` or `<score>`: earl's
    reason-first traces) or opens it (right after `k.`); whichever reading finds more verdicts is the
    trace's order. So a reason that starts with "no" (`8. no stray colours - yes`) or ends with one
    is not taken for a verdict."""
    w = words or _verdict_words(layout)

    def numbered(t):  # a point number `k .` starts at t
        return 0 <= t and t + 1 < len(ids) and ids[t] in w["numbers"] and ids[t + 1] in w["marks"]

    score = w["opening"]
    verdicts = [t for t, tok in enumerate(ids) if tok in w["yes_no"]]
    closing = [t for t in verdicts if numbered(t + 1) or ids[t + 1 : t + 1 + len(score)] == score]
    opening = [t for t in verdicts if numbered(t - 2)]
    return closing if len(closing) >= len(opening) else opening


def point_expectation(layout, new_ids: torch.Tensor, step_logits: torch.Tensor,
                      n_points: list[int]) -> list[float | None]:
    """Each row's score as 10 x the mean over its verdicts of P(yes), the softmax over the words
    yes/no at each verdict word (`verdict_positions`); None unless it wrote exactly `n_points[i]`.

    Why: E[score] reads only the last number the model writes; this reads how sure it is of each
    point it checked, which is where a reasoning verifier's evidence is. It ignores deductions beyond
    the points (a near-copy of the source scoring 0), which only the written score carries."""
    words = _verdict_words(layout)
    yes_no = [words["yes"], words["no"]]
    return [points_from_yes_no(layout, ids, logits[:, yes_no], n, words)
            for ids, logits, n in zip(new_ids.tolist(), step_logits, n_points)]


def points_from_yes_no(layout, ids: list[int], yes_no_logits: torch.Tensor, n_points: int,
                       words: dict | None = None) -> float | None:
    """E[points] of one trace from the logits of the words (yes, no) at each of its steps, a
    (len(ids), 2) tensor: 10 x the mean P(yes) at its verdict words; None unless it wrote exactly
    `n_points` verdicts. Shared by the benchmark's readout and GCPO's `score: points`."""
    at = verdict_positions(layout, ids, words)
    if len(at) != n_points or n_points == 0:
        return None
    return float(10.0 * torch.softmax(yes_no_logits[at].float(), dim=-1)[:, 0].mean())


def score_words(layout) -> list[int]:
    """The token ids of the words 0, 1, ..., 10: the integer part a verdict's score can take."""
    return [layout.encode_text(str(n))[0] for n in range(11)]


def score_position(layout, ids: list[int]) -> int | None:
    """Index in `ids` of the word after the last `<score>` (where the integer part is chosen), or
    None when the trace wrote no `<score>` or stopped right after it."""
    opening = layout.encode_text("<score>")
    at = [t + len(opening) for t in range(len(ids) - len(opening) + 1) if ids[t : t + len(opening)] == opening]
    return at[-1] if at and at[-1] < len(ids) else None


def expectation_over_score_words(number_logits: torch.Tensor) -> float:
    """Σ n · p(n) with p the softmax over the logits of the words 0-10 (renormalised to them)."""
    p = torch.softmax(number_logits.float(), dim=-1)
    return float((p * torch.arange(11, dtype=torch.float32, device=p.device)).sum())


def score_expectation(layout, new_ids: torch.Tensor, step_logits: torch.Tensor) -> list[float | None]:
    """Each row's score as the model's expectation rather than its greedy choice: at the step after
    the last `<score>` it wrote, the softmax over the words 0-10 (renormalised to them), averaged with
    their values. A decimal part it then writes is ignored.

    Why: a small reward model gives many candidates the same greedy score (10 for nearly everything),
    and a tie says nothing about which edit is better; how sure it is of that 10 does, without the
    cost of sampling k traces (Avg@k). `new_ids` (B, T) are the generated ids and `step_logits`
    (B, T, V) the logits each was chosen from."""
    numbers = torch.tensor(score_words(layout), device=step_logits.device)
    out: list[float | None] = []
    for ids, logits in zip(new_ids.tolist(), step_logits):
        at = score_position(layout, ids)
        out.append(None if at is None else expectation_over_score_words(logits[at][numbers]))
    return out


TRACE_SCORES = ("written", "expected", "points")  # GCPO's τ of a sampled trace (`gcpo.score`)


def watched_words(layout, score: str) -> list[int] | None:
    """The token ids whose logits the GCPO sampler keeps at every step for τ read as `score`
    (`earl.generate.sample_traces_watching`): the words 0-10 for "expected", yes/no for "points",
    none for "written"."""
    if score == "expected":
        return score_words(layout)
    if score == "points":
        words = _verdict_words(layout)
        return [words["yes"], words["no"]]
    return None


def trace_score(layout, tokenizer, ids: list[int], n_points: int,
                watched: torch.Tensor | None = None, score: str = "written") -> float | None:
    """τ of one sampled trace's token ids: None unless it parses (`parse_trace`, `n_points` verdicts).
    `score` "written": the score it wrote; with `watched` (the logits of `watched_words(layout, score)`
    at each of its steps), "expected": the expectation at the word after its last `<score>`
    (E[score]), "points": 10 x the mean P(yes) at its verdict words (E[points])."""
    if score not in TRACE_SCORES:
        raise ValueError(f"trace_score: score {score!r} is not one of {', '.join(TRACE_SCORES)}")
    if score != "written" and watched is None:
        raise ValueError(f"trace_score: the {score} score reads the watched logits; none were given")
    v = parse_trace(normalise_decoded(tokenizer.decode(ids, skip_special_tokens=True)), n_points)
    if v is None or score == "written":
        return None if v is None else v.score
    if score == "points":
        return points_from_yes_no(layout, ids, watched, n_points)
    at = score_position(layout, ids)
    return None if at is None else expectation_over_score_words(watched[at])
