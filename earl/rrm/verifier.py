"""Prompts, verdict readouts and the verifier of the reasoning reward model as earl's own unified
token model (the case trainable on a CPU).

It reads one sequence and writes the verdict text of `earl.rrm.trace`:

    <bos> "judge : {instruction} points : 1 . {question} 2 . {question} ..." [source image] [edited image]
      ->  "1 . yes - {reason} ... <score> 7 </score>" <eos>

with the images in the editor's own format (the same `EditLayout`), so the reward model is an
editor directory like any other (`UnifiedEditor`), trained by `earl train rrm-sft`.

`RRMVerifier` (the `rrm` backend of `earl.verify`) judges edits with such a model: points from the
ShapesEdit oracle when the request carries scene graphs (each cached per source and instruction),
greedy decoding of the verdicts, then `parse_trace`; a reply that does not parse is a failure
(masked and counted), never a zero. Word-level tokenizers drop newlines and split `<score>` into
pieces, so decoded text is normalised back to the contract before parsing (`normalise_decoded`).

`rrm_scorer` reads such a model as a pair scorer (`earl.rrm.pairs.pairwise_accuracy`), for GCPO's
evaluation and `earl eval rewardbench`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re

import torch

from earl.errors import ConfigError
from earl.generate import greedy_text, sample_traces
from earl.layout import Example
from earl.model import UnifiedEditor
from earl.rrm.coldstart import observed_part, scan_form
from earl.rrm.principles import EvalPoint, PrincipleCache, llm_points, shapes_points
from earl.rrm.serving import rrm_messages
from earl.rrm.trace import parse_trace, reason_span
from earl.verify.base import RewardResult
from earl.verify.chat import build_chat_backend, chat_with_retries
from earl.verify.oracle import scene_from_meta


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


LOGIT_READOUTS = ("expected_score", "expected_points")  # read from the logits, beside the written score


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


def sample_verdicts(editor, instructions: list[str], points: list[list[EvalPoint]], source_codes, edited_codes,
                    k: int, temperature: float = 1.0, max_new_tokens: int = 320, batch_size: int = 32,
                    generator: torch.Generator | None = None) -> list[list[str]]:
    """k sampled verdict texts per edit (normalised to the contract), for Avg@k self-consistency;
    about `batch_size` sampled rows per call."""
    layout, tok = editor.layout, editor.text_tokenizer
    per_call = max(1, batch_size // k)
    out = []
    for s in range(0, len(instructions), per_call):
        prompts = [judge_prompt(layout, ins, pts, a.cpu(), b.cpu()) for ins, pts, a, b in
                   zip(instructions[s : s + per_call], points[s : s + per_call],
                       source_codes[s : s + per_call], edited_codes[s : s + per_call])]
        comps = sample_traces(editor.backbone, prompts, k, temperature, max_new_tokens, layout.ids.eos,
                              layout.ids.pad, generator)
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
    # here, not at the top: tests/rrm/test_rrm_parts.py patches earl.rrm.trace.parse_trace
    from earl.rrm.trace import parse_trace

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


class RRMVerifier:
    """Rewards from a reasoning reward model, one of three ways:

    - `model_path`: earl's own unified token model (written by `earl train rrm-sft` / `rrm-gcpo`), in process;
    - `base_url` (+ `model`): any OpenAI-compatible server: `earl serve judge --model RRM_DIR`, or vLLM
      serving a Qwen2.5-VL-style model (the real-scale case);
    - `vlm_path`: a transformers image-text-to-text checkpoint from a local directory, in process.

    Principles: from the ShapesEdit oracle when the request carries scene graphs; otherwise from a
    multimodal LLM (`principles_base_url` + `principles_model`, or else the verdict backend itself
    when that is a chat model), cached per (source image, instruction) under `principle_cache`, so
    every candidate of a prompt is judged against the same 10 points. A request whose principles
    cannot be had fails (counted), like a reply that does not parse.

    `samples` = k > 1 gives Avg@k self-consistency (earl's model only): the reward is the mean score of
    the k sampled traces that parse, which breaks the ties a greedy verdict leaves between candidates;
    the edit fails only when none of the k parses.

    `expected_score` (earl's model, greedy): the reward is the greedy trace's score read as the
    expectation of the integer after `<score>` (`score_expectation`): it breaks the same ties at the
    cost of one greedy trace, not k sampled ones. The trace must still parse. `expected_points`: the
    same with E[points], 10 x the mean P(yes) at its verdict words (`point_expectation`), which ranks
    pairs better than E[score] on ShapesEdit (docs/REWARD_MODELS.md) but ignores deductions beyond the
    points.
    """

    name = "rrm"

    def __init__(self, model_path: str | None = None, max_new_tokens: int = 320, batch_size: int = 16,
                 samples: int = 1, temperature: float = 1.0, seed: int = 0,
                 device: str = "cpu", base_url: str | None = None, model: str | None = None,
                 vlm_path: str | None = None, concurrency: int = 16, retries: int = 2, timeout: float = 120.0,
                 principles_base_url: str | None = None, principles_model: str | None = None,
                 principle_cache: str | None = "runs/principles", expected_score: bool = False,
                 expected_points: bool = False):
        if sum(x is not None for x in (model_path, base_url, vlm_path)) != 1:
            raise ConfigError("rrm verifier: give exactly one of model_path (earl's model, in process), base_url "
                              "(a server) or vlm_path (a transformers image-text-to-text model, in process)")
        if samples < 1 or (samples > 1 and temperature <= 0):
            raise ConfigError(f"rrm verifier: samples must be >= 1 and temperature > 0 when sampling, got samples="
                              f"{samples}, temperature={temperature}")
        if samples > 1 and model_path is None:
            raise ConfigError("rrm verifier: samples > 1 (Avg@k) is built for earl's own model (model_path); a "
                              "server or a transformers VLM is judged greedily")
        if expected_score and expected_points:
            raise ConfigError("rrm verifier: give at most one of expected_score and expected_points (one readout)")
        readout = "expected_score" if expected_score else "expected_points" if expected_points else None
        if readout and (model_path is None or samples > 1):
            raise ConfigError(f"rrm verifier: {readout} reads the logits of earl's own model (model_path) on a "
                              "greedy trace; it does not combine with a server, a transformers VLM or samples > 1")
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.samples, self.temperature, self.readout = samples, temperature, readout
        self.generator = torch.Generator().manual_seed(seed)  # one stream for the verifier's life: calls differ
        self.editor = self.backend = None
        if model_path is not None:
            self.editor = UnifiedEditor.from_pretrained(model_path, device=device)
        elif base_url is not None:
            self.backend = build_chat_backend("openai", base_url=base_url, model=model, timeout=timeout,
                                              max_connections=concurrency)
        else:
            self.backend = build_chat_backend("local", model_path=vlm_path, max_batch=batch_size, device=device)
        self.principles_backend = self.backend
        if principles_base_url is not None:
            self.principles_backend = build_chat_backend("openai", base_url=principles_base_url, model=principles_model,
                                                         timeout=timeout, max_connections=concurrency)
        self.principle_cache = PrincipleCache(principle_cache) if principle_cache else None
        self.concurrency, self.retries = concurrency, retries

    def points_for(self, req) -> list[EvalPoint] | None:
        """The request's principles; None when the LLM decomposition failed on every try."""
        meta = req.meta or {}
        if meta.get("source_scene") and meta.get("target_scene"):
            seed = int(hashlib.sha256(f"{meta.get('id', '')}|{req.instruction}".encode()).hexdigest()[:8], 16)
            return shapes_points(scene_from_meta(meta, "source_scene"), scene_from_meta(meta, "target_scene"), seed=seed)
        if self.principles_backend is None:
            raise ConfigError("rrm verifier: this request has no ShapesEdit scene graphs, so its principles must "
                              "come from a multimodal LLM: set principles_base_url (and principles_model)")
        return llm_points(self.principles_backend, req.source, req.instruction, self.principle_cache,
                          retries=self.retries)

    def judge(self, instructions, points, source_images, edited_images) -> list[list[str]]:
        """`samples` verdict texts per edit (one when greedy)."""
        return self._judge(instructions, points, source_images, edited_images)[0]

    def _judge(self, instructions, points, source_images, edited_images):
        """(verdict texts per edit, each greedy trace's E[score] or E[points], or None without a readout)."""
        if self.backend is not None:
            return [[t] for t in self._judge_http(instructions, points, source_images, edited_images)], None
        ed = self.editor
        src = ed.encode_images([ed.preprocess(im)[0] for im in source_images])
        out_codes = ed.encode_images([ed.preprocess(im)[0] for im in edited_images])
        if self.readout:
            texts, values = generate_verdicts(ed, instructions, points, src, out_codes, self.max_new_tokens,
                                              self.batch_size, readouts=(self.readout,))
            return [[t] for t in texts], values[self.readout]
        if self.samples == 1:
            return [[t] for t in generate_verdicts(ed, instructions, points, src, out_codes, self.max_new_tokens,
                                                   self.batch_size)], None
        return sample_verdicts(ed, instructions, points, src, out_codes, self.samples, self.temperature,
                               self.max_new_tokens, self.batch_size * self.samples, self.generator), None

    def _judge_http(self, instructions, points, source_images, edited_images) -> list[str]:
        async def run():
            sem = asyncio.Semaphore(self.concurrency)

            async def one(args):
                n = len(args[1])
                async with sem:
                    call = await chat_with_retries(
                        self.backend, rrm_messages(args[2], args[3], args[0], args[1]),
                        lambda t: t if parse_trace(t, n) is not None else None,
                        max_tokens=self.max_new_tokens, temperature=0.0, retries=self.retries, backoff=0.5)
                    return call.raw

            try:
                return await asyncio.gather(*(one(a) for a in zip(instructions, points, source_images, edited_images)))
            finally:
                await self.backend.aclose()

        return list(asyncio.run(run()))

    def score(self, requests):
        points = [self.points_for(r) for r in requests]
        ok = [i for i, p in enumerate(points) if p is not None]
        if not ok:  # nothing to judge (an empty batch, or no principles anywhere): no model call
            return [RewardResult.failure("no principles: the decomposition failed on every try") for _ in points]
        judged, expectations = self._judge([requests[i].instruction for i in ok], [points[i] for i in ok],
                                           [requests[i].source for i in ok], [requests[i].edited for i in ok])
        texts = dict(zip(ok, judged))
        expected = dict(zip(ok, expectations)) if expectations is not None else {}
        out = []
        for i, pts in enumerate(points):
            if pts is None:
                out.append(RewardResult.failure("no principles: the decomposition failed on every try"))
                continue
            parsed = [(t, v) for t in texts[i] if (v := parse_trace(t, len(pts))) is not None]
            if not parsed:
                out.append(RewardResult.failure("unparseable verdicts" + (f" (all {len(texts[i])} samples)"
                                                                          if len(texts[i]) > 1 else ""),
                                                raw=texts[i][0]))
                continue
            text, v = parsed[0]  # the first parsed trace stands for the edit's principles and raw reply
            if self.readout and expected.get(i) is None:  # parsed, yet the readout's words are not where expected
                out.append(RewardResult.failure(f"{self.readout}: not readable from the trace's logits", raw=text))
                continue
            score = sum(pv.score for _, pv in parsed) / len(parsed)
            scores = {"score": score, "point_average": sum(pv.point_average for _, pv in parsed) / len(parsed)}
            if self.readout:
                scores["written_score"], score = score, expected[i]
                scores["score"] = score
            if len(texts[i]) > 1:
                scores["parsed_samples"] = float(len(parsed))
            out.append(RewardResult(reward=score / 10.0, scores=scores,
                                    principles=[{"question": p.question, "category": p.category, "passed": ok,
                                                 "reason": why} for p, ok, why in zip(pts, v.passed, v.reasons)],
                                    raw=text))
        return out
