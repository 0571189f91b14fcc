"""Preference pairs on ShapesEdit from simulated annotators, and pairwise accuracy of a reward model.

Annotators (documented model, Bradley–Terry): for two candidate edits a, b of one sample with oracle
scores s_a, s_b (the cold-start score rule, 0-10), an annotator prefers a with probability
sigmoid((s_a - s_b) / temperature); pairs whose oracle scores are equal are "same" and excluded,
as Edit-R1 excludes them. With temperature 1 a 1-point gap is preferred correctly 73% of the time,
a 3-point gap 95%: labels are noisy the way human ones are, and the oracle's own accuracy on the
noisy labels is the ceiling a reward model can reach.

`pairwise_accuracy` scores both images of every pair with any scorer and reports the fraction
ranked as the annotator did, overall and per edit category and per kind of failure, with 95%
Wilson intervals; a pair where the scorer failed on either image counts as wrong and is counted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from earl.stats import wilson_ci


@dataclass
class PairData:
    """Where a reward-model trainer's preference pairs come from (a recipe's `data` section)."""

    samples: int = 1000  # ShapesEdit samples whose candidates form the training pairs
    pairs_per_sample: int = 4
    annotator_temperature: float = 1.0
    seed: int = 1
    eval_samples: int = 40  # held-out samples (another seed) for the evaluation pairs


@dataclass
class Pair:
    sample: int  # index of the sample both candidates edit
    category: str
    preferred: dict  # cold-start example dicts (earl.rrm.coldstart.make_examples)
    rejected: dict
    gap: float  # oracle score difference, preferred minus rejected (negative: the annotator erred)


def make_pairs(examples: list[dict], categories: list[str], rng: random.Random, per_sample: int = 4,
               temperature: float = 1.0) -> list[Pair]:
    """Up to `per_sample` annotated pairs per sample from its candidates (equal scores excluded)."""
    by_sample: dict[int, list[dict]] = {}
    for e in examples:
        by_sample.setdefault(e["sample"], []).append(e)
    pairs = []
    for k, cands in by_sample.items():
        options = [(a, b) for i, a in enumerate(cands) for b in cands[i + 1 :] if a["score"] != b["score"]]
        for a, b in rng.sample(options, min(per_sample, len(options))):
            p_a = 1.0 / (1.0 + math.exp(-(a["score"] - b["score"]) / temperature))
            w, lo = (a, b) if rng.random() < p_a else (b, a)
            pairs.append(Pair(k, categories[k], w, lo, w["score"] - lo["score"]))
    return pairs


def _summary(hits: list[bool]) -> dict:
    n, k = len(hits), sum(hits)
    lo, hi = wilson_ci(k, n)
    return {"n": n, "accuracy": k / n if n else float("nan"), "ci": [lo, hi]}


def pairwise_accuracy(pairs: list[Pair], score: Callable[[list[dict]], list[float | None]]) -> dict:
    """`score(examples) -> scores` (None = failed) for the candidates; accuracy overall, per category,
    per kind of the rejected candidate (which failure the scorer had to notice)."""
    flat = [e for p in pairs for e in (p.preferred, p.rejected)]
    unique = list({id(e): e for e in flat}.values())  # a candidate sits in several pairs: judge it once
    by_id = dict(zip((id(e) for e in unique), score(unique)))
    scores = [by_id[id(e)] for e in flat]
    hits, failed = [], 0
    for i, _ in enumerate(pairs):
        s_w, s_l = scores[2 * i], scores[2 * i + 1]
        if s_w is None or s_l is None:
            failed += 1
            hits.append(False)
        else:
            hits.append(s_w > s_l)
    out = {"overall": _summary(hits), "failed": failed,
           "per_category": {}, "per_rejected_kind": {}}
    for key, name in (("per_category", lambda p: p.category), ("per_rejected_kind", lambda p: p.rejected["kind"])):
        groups: dict[str, list[bool]] = {}
        for p, h in zip(pairs, hits):
            groups.setdefault(name(p), []).append(h)
        out[key] = {g: _summary(h) for g, h in sorted(groups.items())}
    return out
