"""The reward-model benchmark on ShapesEdit: `earl eval rewardbench --rrm NAME=DIR ... --out OUT`.

Held-out preference pairs (`earl.rrm.pairs`, a seed no training run uses) judged by:
- `oracle`: the exact cold-start score (the ceiling, below 100% only because annotators are noisy);
- each reasoning reward model given as NAME=DIR (greedy verdicts, the parsed score), and with
  `avg_k` also Avg@k self-consistency (the mean score of k sampled traces);
- each scalar Bradley–Terry model (`earl.rrm.scalar`, the holistic baseline).
Writes OUT/rewardbench.json and OUT/rewardbench.md (pairwise accuracy with 95% Wilson intervals,
per edit category and per kind of the rejected candidate; failures counted, scored as wrong).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from earl.io import atomic_write_json, atomic_write_text
from earl.rrm.pairs import make_pairs, pairwise_accuracy


def held_out_pairs(image_tokenizer, samples: int, seed: int, image_size: int, per_sample: int = 4,
                   annotator_temperature: float = 1.0):
    from earl.rrm.coldstart import draw_examples

    drawn, examples = draw_examples(image_tokenizer, samples, seed, image_size)
    return make_pairs(examples, [s.category for s in drawn], random.Random(seed + 1), per_sample=per_sample,
                      temperature=annotator_temperature)


def rrm_scorer(editor, max_new_tokens: int = 200, k: int = 1, temperature: float = 1.0, seed: int = 0,
               batch_size: int = 32):
    """Scores from a reasoning reward model: greedy (k = 1), or Avg@k self-consistency: the mean score
    of k sampled traces (those that parse; None only when none of the k parses)."""
    from earl.rrm.model import generate_verdicts, judge_prompt, normalise_decoded
    from earl.rrm.trace import parse_trace

    def score(examples: list[dict]) -> list[float | None]:
        if k == 1:
            texts = generate_verdicts(editor, [e["instruction"] for e in examples], [e["points"] for e in examples],
                                      [e["source_codes"] for e in examples], [e["codes"] for e in examples],
                                      max_new_tokens=max_new_tokens)
            parsed = [parse_trace(t, len(e["points"])) for t, e in zip(texts, examples)]
            return [None if v is None else v.score for v in parsed]
        from earl.train.gcpo import sample_traces

        layout, tok = editor.layout, editor.text_tokenizer
        g = torch.Generator(device=editor.device).manual_seed(seed)
        per_call = max(1, batch_size // k)  # k sampled rows per example, about batch_size rows per call
        out = []
        for s in range(0, len(examples), per_call):
            chunk = examples[s : s + per_call]
            prompts = [judge_prompt(layout, e["instruction"], e["points"], e["source_codes"], e["codes"]) for e in chunk]
            comps = sample_traces(editor.backbone, prompts, k, temperature, max_new_tokens, layout.ids.eos,
                                  layout.ids.pad, g)
            for j, e in enumerate(chunk):
                vals = [parse_trace(normalise_decoded(tok.decode(c, skip_special_tokens=True)), len(e["points"]))
                        for c in comps[j * k : (j + 1) * k]]
                vals = [v.score for v in vals if v is not None]
                out.append(sum(vals) / len(vals) if vals else None)
        return out

    return score


def run_rewardbench(models: dict[str, str], out_dir: str | Path, samples: int = 200, seed: int = 987_654,
                    image_tokenizer_dir: str | None = None, max_new_tokens: int = 200,
                    scalars: dict[str, str] | None = None, avg_k: int = 0) -> dict:
    """`models`: reasoning reward models by name; `scalars`: scalar Bradley-Terry models by name."""
    from earl.model import UnifiedEditor
    from earl.rrm.scalar import ScalarRewardModel, scalar_scorer
    from tokenizer.vq import VQTokenizer

    editors = {name: UnifiedEditor.from_pretrained(d) for name, d in models.items()}
    scalar_models = {name: ScalarRewardModel.load(d) for name, d in (scalars or {}).items()}
    if editors or scalar_models:
        first = next(iter([*editors.values(), *(m.editor for m in scalar_models.values())]))
        tok, size = first.image_tokenizer, first.config.image_size
    else:
        tok, size = VQTokenizer.from_pretrained(image_tokenizer_dir or "checkpoints/shapes-editor/image_tokenizer"), 64
    pairs = held_out_pairs(tok, samples, seed, size)
    results = {"pairs": len(pairs), "samples": samples, "seed": seed,
               "scorers": {"oracle": pairwise_accuracy(pairs, lambda ex: [e["score"] for e in ex])}}
    for name, ed in editors.items():
        results["scorers"][name] = pairwise_accuracy(pairs, rrm_scorer(ed, max_new_tokens))
        if avg_k > 1:
            results["scorers"][f"{name} Avg@{avg_k}"] = pairwise_accuracy(pairs, rrm_scorer(ed, max_new_tokens, k=avg_k))
    for name, m in scalar_models.items():
        results["scorers"][name] = pairwise_accuracy(pairs, scalar_scorer(m))
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "rewardbench.json", results)
    atomic_write_text(out_dir / "rewardbench.md", format_table(results) + "\n")
    return results


def format_table(results: dict) -> str:
    def cell(s):
        lo, hi = s["ci"]
        return f"{s['accuracy']:.3f} ({lo:.2f}-{hi:.2f})"

    lines = [f"Pairwise accuracy on {results['pairs']} held-out ShapesEdit preference pairs (seed {results['seed']}; "
             "a failed judgement counts as wrong)", "", "| scorer | accuracy (95% CI) | failed |", "|---|---:|---:|"]
    for name, r in results["scorers"].items():
        lines.append(f"| {name} | {cell(r['overall'])} | {r['failed']} |")
    kinds = sorted({k for r in results["scorers"].values() for k in r["per_rejected_kind"]})
    lines += ["", "| rejected candidate | " + " | ".join(results["scorers"]) + " |",
              "|---|" + "---:|" * len(results["scorers"])]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{r['per_rejected_kind'][k]['accuracy']:.2f}"
                                             if k in r["per_rejected_kind"] else "n/a"
                                             for r in results["scorers"].values()) + " |")
    return "\n".join(lines)
