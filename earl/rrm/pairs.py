"""Preference pairs on ShapesEdit from simulated annotators, and pairwise accuracy of a reward model.

Annotators (documented model, Bradley–Terry): for two candidate edits a, b of one sample with oracle
scores s_a, s_b (the cold-start score rule, 0-10), an annotator prefers a with probability
sigmoid((s_a - s_b) / temperature); pairs whose oracle scores are equal are "same" and excluded,
as Edit-R1 excludes them. With temperature 1 a 1-point gap is preferred correctly 73% of the time,
a 3-point gap 95%: labels are noisy the way human ones are, and the oracle's own accuracy on the
noisy labels is the ceiling a reward model can reach.

`held_out_pairs` draws ShapesEdit samples with a seed and annotates pairs between their candidates:
the training pairs of the reward-model trainers and, with a seed no training run uses, the benchmark's.

`pairwise_accuracy` scores both images of every pair with any scorer and reports the fraction
ranked as the annotator did, overall and per edit category and per kind of failure, with 95%
Wilson intervals; a pair where the scorer failed on either image counts as wrong and is counted.

`load_pair_file` reads human preference pairs of real edits (EditReward-Bench style, one pair per
line) into the same `Pair`s, so one accuracy code path serves both.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from earl.errors import DataError
from earl.io import iter_jsonl
from earl.rrm.coldstart import draw_examples
from earl.stats import mean_ci, proportion


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


def held_out_pairs(image_tokenizer, samples: int, seed: int, image_size: int, per_sample: int = 4,
                   annotator_temperature: float = 1.0):
    return held_out_samples_and_pairs(image_tokenizer, samples, seed, image_size, per_sample, annotator_temperature)[1]


def held_out_samples_and_pairs(image_tokenizer, samples: int, seed: int, image_size: int, per_sample: int = 4,
                               annotator_temperature: float = 1.0):
    """(ShapesEdit samples drawn with `seed`, annotated preference pairs between their candidates)."""
    drawn, examples = draw_examples(image_tokenizer, samples, seed, image_size)
    return drawn, make_pairs(examples, [s.category for s in drawn], random.Random(seed + 1), per_sample=per_sample,
                             temperature=annotator_temperature)


def _summary(hits: list[bool]) -> dict:
    accuracy = proportion(hits)
    return {"n": accuracy.n, "accuracy": accuracy.rate, "ci": list(accuracy.ci)}


def paired_difference(hits_a: list[int], hits_b: list[int]) -> dict:
    """Accuracy of scorer a minus scorer b on the same pairs: the mean of the per-pair differences
    with a 95% t interval. Why: two scorers judged on the same pairs share the pairs' difficulty, so
    the paired interval is far narrower than the gap between two separate accuracy intervals."""
    if len(hits_a) != len(hits_b) or not hits_a:
        raise ValueError(f"paired_difference: {len(hits_a)} and {len(hits_b)} pairs; expected the same pairs")
    d = [a - b for a, b in zip(hits_a, hits_b)]
    lo, hi = mean_ci(d, bounds=(-1.0, 1.0))
    return {"n": len(d), "difference": sum(d) / len(d), "ci": [lo, hi]}


def pairwise_accuracy(pairs: list[Pair], score: Callable[[list[dict]], list[float | None]]) -> dict:
    """`score(examples) -> scores` (None = failed) for the candidates; accuracy overall, per category,
    per kind of the rejected candidate (which failure the scorer had to notice)."""
    flat = [e for p in pairs for e in (p.preferred, p.rejected)]
    unique = list({id(e): e for e in flat}.values())  # a candidate sits in several pairs: judge it once
    by_id = dict(zip((id(e) for e in unique), score(unique)))
    scores = [by_id[id(e)] for e in flat]
    hits, failed, ties = [], 0, 0
    for i, _ in enumerate(pairs):
        s_w, s_l = scores[2 * i], scores[2 * i + 1]
        if s_w is None or s_l is None:
            failed += 1
            hits.append(False)
        else:
            ties += s_w == s_l  # counted wrong too: a scorer that cannot tell the two apart did not rank them
            hits.append(s_w > s_l)
    out = {"overall": _summary(hits), "failed": failed, "ties": ties,
           "per_category": {}, "per_rejected_kind": {}, "hits": [int(h) for h in hits]}
    for key, name in (("per_category", lambda p: p.category), ("per_rejected_kind", lambda p: p.rejected.get("kind"))):
        groups: dict[str, list[bool]] = {}
        for p, h in zip(pairs, hits):
            if name(p) is not None:  # real pairs have no kind of failure
                groups.setdefault(name(p), []).append(h)
        out[key] = {g: _summary(h) for g, h in sorted(groups.items())}
    return out


PAIR_FIELDS = {"source": "an image path", "instruction": "a non-empty string", "image_a": "an image path",
               "image_b": "an image path", "preferred": '"a", "b" or "same"'}


def load_pair_file(path: str | Path) -> tuple[list[Pair], int]:
    """Real preference pairs from a jsonl file; returns (pairs, number of "same" pairs excluded).

    One object per line: {"source", "instruction", "image_a", "image_b", "preferred": "a"|"b"|"same"}
    and optionally "id" and "category". Image paths are relative to the file's folder or absolute.
    Each image becomes an example dict {"source", "instruction", "image"} (paths, opened by the scorer);
    examples that are the same file are the same dict, so a scorer judges each image once.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pair file not found (expected jsonl: one preference pair per line)")
    examples: dict[tuple[str, str, str], dict] = {}

    def example(src: Path, instruction: str, image: Path) -> dict:
        key = (str(src), instruction, str(image))
        return examples.setdefault(key, {"source": src, "instruction": instruction, "image": image})

    pairs, same = [], 0
    for n, row in iter_jsonl(path):
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with fields {', '.join(PAIR_FIELDS)}")
        for field_name, form in PAIR_FIELDS.items():
            value = row.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field {field_name!r} missing or empty (expected {form})")
        pref = row["preferred"].strip().lower()
        if pref not in ("a", "b", "same"):
            raise DataError(f"{where}: field 'preferred' is {row['preferred']!r} (expected \"a\", \"b\" or \"same\")")
        images = {}
        for field_name in ("source", "image_a", "image_b"):
            p = Path(row[field_name])
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise DataError(f"{where}: field {field_name!r}: image {p} not found")
            images[field_name] = p
        if pref == "same":
            same += 1
            continue
        a = example(images["source"], row["instruction"], images["image_a"])
        b = example(images["source"], row["instruction"], images["image_b"])
        w, lo = (a, b) if pref == "a" else (b, a)
        pairs.append(Pair(n, str(row.get("category") or "all"), w, lo, float("nan")))
    if not pairs:
        raise DataError(f"{path}: no pairs with a preference (every line empty or \"same\")")
    return pairs, same
