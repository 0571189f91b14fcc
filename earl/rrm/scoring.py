"""The reward model's verdicts decoded and scored: greedy verdicts with their logit readouts, sampled
verdicts for Avg@k self-consistency, `rrm_scorer` (a pair scorer for `earl.rrm.pairs.pairwise_accuracy`,
GCPO's evaluation and `earl eval rewardbench`), and how verdicts meet the oracle's per principle type.
"""

from __future__ import annotations

import re

import torch

from earl.generate import Generators, TextSampling, TextStops, decode_text, greedy_text, left_pad
from earl.rrm.coldstart import observed_part, scan_form
from earl.rrm.principles import EvalPoint
from earl.rrm.prompt import judge_prompt, normalise_decoded
from earl.rrm.readouts import LOGIT_READOUTS, point_expectation, score_expectation
from earl.rrm.trace import parse_trace
from earl.verify.local_vlm import row_seed


@torch.no_grad()
def generate_verdicts(editor, instructions: list[str], points: list[list[EvalPoint]], source_codes, edited_codes,
                      max_new_tokens: int = 320, batch_size: int = 16, readouts: tuple[str, ...] = ()):
    """Greedy verdict texts (normalised to the contract) for code grids of sources and edits.

    With `readouts`, returns (texts, {readout: values}), a value per trace read from the logits its
    words were chosen from (None where it cannot be read), all from the one generation:
    "expected_score" the expectation of the integer after `<score>` (`score_expectation`),
    "expected_points" 10 x the mean P(yes) of its verdict words (`point_expectation`)."""
    unknown = set(readouts) - set(LOGIT_READOUTS)
    if unknown:
        raise ValueError(f"readouts {sorted(unknown)}: expected some of {', '.join(LOGIT_READOUTS)}")
    texts, values = [], {r: [] for r in readouts}
    layout = editor.layout
    for s in range(0, len(instructions), batch_size):
        seqs = [judge_prompt(layout, ins, pts, a.cpu(), b.cpu()) for ins, pts, a, b in
                zip(instructions[s : s + batch_size], points[s : s + batch_size],
                    source_codes[s : s + batch_size], edited_codes[s : s + batch_size])]
        batch = {k: v.to(editor.device) for k, v in layout.pad_prompts(seqs).items()}
        new, step_logits = greedy_text(editor.backbone, batch, max_new_tokens, layout.ids.eos, layout.ids.pad,
                                       keep_logits=bool(readouts))  # (B, T, V) only for the logit readouts
        texts += [normalise_decoded(t) for t in editor.text_tokenizer.batch_decode(new, skip_special_tokens=True)]
        if "expected_score" in values:
            values["expected_score"] += score_expectation(layout, new, step_logits)
        if "expected_points" in values:
            values["expected_points"] += point_expectation(layout, new, step_logits,
                                                           [len(p) for p in points[s : s + batch_size]])
    return (texts, values) if readouts else texts


def row_generator(seed: int | None, device) -> torch.Generator:
    """The generator one sampled verdict draws from: seeded `seed` (taken modulo 2**63), or at random when
    None. Edit i's j-th sample is seeded seeds[i] + j in process (`verdict_generators`) and over HTTP
    (`earl serve judge`: request seed s, choice j), so both write the same traces."""
    return torch.Generator(device=device).manual_seed(row_seed(seed))


def verdict_generators(seeds: list[int], k: int, device) -> list[torch.Generator]:
    """One generator per sampled row of `sample_verdicts` (edit-major): edit i's j-th from seeds[i] + j."""
    return [row_generator(s + j, device) for s in seeds for j in range(k)]


def sample_traces(editor, prompts: list[list[int]], k: int, temperature: float, max_new_tokens: int,
                  generator: Generators) -> list[list[int]]:
    """k sampled traces per judge prompt (prompt-major), each ending at <eos> (kept) or the token budget.
    `generator`: one for all rows, or one per row."""
    ids = editor.layout.ids
    rows = [p for p in prompts for _ in range(k)]
    batch = left_pad(rows, ids.pad, editor.device)
    got = decode_text(editor.backbone, batch, TextStops(ids.eos, ids.pad, max_new_tokens),
                      TextSampling(temperature, 1.0, generator))
    return [got.row(i) for i in range(len(rows))]


def sample_verdicts(editor, instructions: list[str], points: list[list[EvalPoint]], source_codes, edited_codes,
                    k: int, temperature: float = 1.0, max_new_tokens: int = 320, batch_size: int = 32,
                    generator: Generators = None) -> list[list[str]]:
    """k sampled verdict texts per edit (normalised to the contract), for Avg@k self-consistency;
    about `batch_size` sampled rows per call. `generator`: one stream for all the rows, or one generator
    per sampled row (edit-major, `verdict_generators`), so that an edit's traces depend on its seed alone."""
    layout, tok = editor.layout, editor.text_tokenizer
    per_call = max(1, batch_size // k)
    if isinstance(generator, (list, tuple)) and len(generator) != len(instructions) * k:
        raise ValueError(f"sample_verdicts: {len(generator)} generators for {len(instructions)} edits x {k} samples")
    out = []
    for s in range(0, len(instructions), per_call):
        prompts = [judge_prompt(layout, ins, pts, a.cpu(), b.cpu()) for ins, pts, a, b in
                   zip(instructions[s : s + per_call], points[s : s + per_call],
                       source_codes[s : s + per_call], edited_codes[s : s + per_call])]
        rows = generator[s * k : (s + len(prompts)) * k] if isinstance(generator, (list, tuple)) else generator
        comps = sample_traces(editor, prompts, k, temperature, max_new_tokens, rows)
        texts = [normalise_decoded(tok.decode(c, skip_special_tokens=True)) for c in comps]
        out += [texts[j * k : (j + 1) * k] for j in range(len(prompts))]
    return out


def rrm_scorer(editor, max_new_tokens: int = 320, k: int = 1, temperature: float = 1.0, seed: int = 0,
               batch_size: int = 32, readout: str = "written"):
    """Scores from a reasoning reward model: greedy (k = 1), or Avg@k self-consistency: the mean score
    of k sampled traces (those that parse; None only when none of the k parses). A greedy call also
    leaves its verdicts' `point_breakdown` on the returned function, as `.points`. `readout` (greedy
    only, `greedy_readouts`): "written" the score each trace wrote; "expected_score" the expectation
    of the integer after its `<score>`; "expected_points" 10 x the mean P(yes) of its verdict words."""
    if readout != "written" and k != 1:
        raise ValueError(f"rrm_scorer: the {readout} readout reads a greedy trace; it does not combine with Avg@k")

    def score(examples: list[dict]) -> list[float | None]:
        if k == 1:
            values, score.points = greedy_readouts(editor, examples, max_new_tokens, (readout,))
            return values[readout]
        g = torch.Generator(device=editor.device).manual_seed(seed)
        texts = sample_verdicts(editor, [e["instruction"] for e in examples], [e["points"] for e in examples],
                                [e["source_codes"] for e in examples], [e["codes"] for e in examples], k,
                                temperature, max_new_tokens, batch_size, g)
        out = []
        for group, e in zip(texts, examples):
            vals = [v.score for v in (parse_trace(t, len(e["points"])) for t in group) if v is not None]
            out.append(sum(vals) / len(vals) if vals else None)
        return out

    return score


def greedy_readouts(editor, examples: list[dict], max_new_tokens: int,
                    readouts: tuple[str, ...]) -> tuple[dict[str, list[float | None]], dict]:
    """One greedy verdict per example, read every way in `readouts` ("written", "expected_score",
    "expected_points"; `generate_verdicts`), and its verdicts' `point_breakdown`.
    A trace that does not parse fails (None) whatever the readout."""
    from_logits = tuple(r for r in readouts if r != "written")
    got = generate_verdicts(editor, [e["instruction"] for e in examples], [e["points"] for e in examples],
                            [e["source_codes"] for e in examples], [e["codes"] for e in examples],
                            max_new_tokens=max_new_tokens, readouts=from_logits)
    texts, values = got if from_logits else (got, {})
    parsed = [parse_trace(t, len(e["points"])) for t, e in zip(texts, examples)]
    values["written"] = [None if v is None else v.score for v in parsed]
    out = {r: [None if v is None else x for v, x in zip(parsed, values[r])] for r in readouts}
    return out, point_breakdown(parsed, examples)


def _same_words(a: str, b: str) -> bool:
    """Reasons compared as words, each in the scan's form (`scan_form`: "row 2, column 1 holds a
    red circle" and "r2c1 red circle" agree) and without an `, expected ...` tail (`observed_part`): a word-level tokenizer spaces out punctuation
    ('4 object ( s )')."""
    def words(t):
        return re.findall(r"\w+", scan_form(observed_part(t)).lower())

    return words(a) == words(b)


def point_breakdown(parsed, examples: list[dict]) -> dict:
    """Per principle type, how a reward model's verdicts meet the oracle's: accuracy on the points the
    oracle passes, the share of the points it fails that the model fails too, and on those failing
    points how often the model's reason says what the oracle's does (what is really in the image).
    A model that answers "yes" everywhere, copying the question into its reasons, scores 1 / 0 / ~0.
    `parsed` are `Verdicts` (None for a failed parse), `examples` carry the oracle's passed and trace."""
    acc: dict[str, dict[str, int]] = {}
    for v, e in zip(parsed, examples):
        if v is None:
            continue
        oracle = parse_trace(e["trace"], len(e["points"]))
        for i, (p, truth) in enumerate(zip(e["points"], e["passed"])):
            c = acc.setdefault(p.category, {"passing": 0, "passing_right": 0, "failing": 0, "failing_caught": 0,
                                            "failing_reason_right": 0})
            if truth:
                c["passing"] += 1
                c["passing_right"] += v.passed[i]
            else:
                c["failing"] += 1
                c["failing_caught"] += not v.passed[i]
                c["failing_reason_right"] += oracle is not None and _same_words(v.reasons[i], oracle.reasons[i])

    def share(a, b):
        return a / b if b else None

    return {cat: {"passing_points": c["passing"], "passing_accuracy": share(c["passing_right"], c["passing"]),
                  "failing_points": c["failing"], "failing_caught": share(c["failing_caught"], c["failing"]),
                  "failing_reason_right": share(c["failing_reason_right"], c["failing"])}
            for cat, c in sorted(acc.items())}
