"""The reward-model benchmark: `earl eval rewardbench --rrm NAME=DIR ... --out OUT`.

On ShapesEdit (the default): held-out preference pairs (`earl.rrm.pairs`, a seed no training run
uses) judged by
- `oracle`: the exact cold-start score (the ceiling, below 100% only because annotators are noisy);
- each reasoning reward model given as NAME=DIR (greedy verdicts, the parsed score), and with
  `avg_k` also Avg@k self-consistency (the mean score of k sampled traces), with `expected_score`
  also the greedy trace's score read as an expectation (E[score], which breaks greedy ties), and
  with `expected_points` as 10 x the mean P(yes) of its verdict words (E[points]);
- each scalar Bradley–Terry model (`earl.rrm.scalar`, the holistic baseline);
- each verifier given as LABEL=NAME[,option=value...] (`earl.verify`: e.g. a zero-shot VIEScore
  judge behind an OpenAI-compatible server), fed the decoded images and the scene graphs.

On real pairs (`pair_file`, EditReward-Bench style jsonl, `earl.rrm.pairs.load_pair_file`): every
scorer is a verifier reading the image files; NAME=DIR models become the `rrm` / `scalar` verifiers.

Writes OUT/rewardbench.json and OUT/rewardbench.md (pairwise accuracy with 95% Wilson intervals,
per edit category and per kind of the rejected candidate; failures and ties counted, scored as wrong).
On ShapesEdit both are rewritten after every scorer, and a rerun into the same OUT with the same
samples and seed reuses each model's result whose weights (sha256) and settings are unchanged, so
adding a model to the comparison judges only that model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from PIL import Image

from earl.checkpoint import sha256_file
from earl.errors import ConfigError, DataError
from earl.io import atomic_write_json, atomic_write_text, read_json
from earl.model import UnifiedEditor
from earl.rrm import scoring  # read per call, so a test can watch the generations
from earl.rrm.pairs import held_out_samples_and_pairs, load_pair_file, paired_difference, pairwise_accuracy
from earl.rrm.scalar import ScalarRewardModel, scalar_scorer
from earl.verify.base import EditRequest
from tokenizer import tensor_to_pil
from tokenizer.vq import VQTokenizer


def shapes_request(image_tokenizer, drawn, seed: int):
    """ShapesEdit example -> `EditRequest`: source and candidate decoded by the tokenizer (what every
    scorer sees), the sample's scene graphs in `meta` (for the oracle and the rrm's principles)."""
    @torch.no_grad()
    def decode(codes):
        return tensor_to_pil(image_tokenizer.decode(codes[None]))[0]

    def to_request(e: dict):
        s = drawn[e["sample"]]
        return EditRequest(decode(e["source_codes"]), e["instruction"], decode(e["codes"]),
                           meta={"id": f"{seed}-{e['sample']}", "source_scene": s.source_scene,
                                 "target_scene": s.target_scene})

    return to_request


def verifier_scorer(verifier, to_request, batch_size: int = 32):
    """Scores (the verifier's reward; None where it failed) for examples turned into `EditRequest`s."""
    def score(examples: list[dict]) -> list[float | None]:
        out = []
        for s in range(0, len(examples), batch_size):
            results = verifier.score([to_request(e) for e in examples[s : s + batch_size]])
            out += [None if r.failed else r.reward for r in results]
        return out

    return score


def image_file_request(example: dict):
    """An `EditRequest` from a real pair's example (image paths; the source is opened once per pair file)."""
    def load(p):
        with Image.open(p) as im:
            return im.convert("RGB")

    return EditRequest(load(example["source"]), example["instruction"], load(example["image"]),
                       meta={"id": str(example["image"])})


def parse_verifier_spec(spec: str) -> tuple[str, dict]:
    """"viescore,base_url=http://host:8000/v1,model=qwen" -> ("viescore", {"base_url": ..., "model": ...});
    values are read as YAML scalars (numbers and booleans typed)."""
    name, *opts = [p.strip() for p in spec.split(",")]
    options = {}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"verifier {spec!r}: option {o!r} is not key=value")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    if not name:
        raise ConfigError(f"verifier {spec!r}: expected NAME[,key=value...]")
    return name, options


def _check_baselines(baselines: list[str] | None, names: list[str]) -> None:
    """Refuse, before any model loads, a baseline that is not one of this run's scorers."""
    missing = [b for b in baselines or [] if b not in names]
    if missing:
        raise ConfigError(f"--baseline {', '.join(missing)}: no such scorer in this run (scorers: {', '.join(names)})")


def run_pair_file_bench(pair_file: str | Path, verifiers: dict, out_dir: str | Path, batch_size: int = 32,
                        baselines: list[str] | None = None) -> dict:
    """Pairwise accuracy of verifiers on real preference pairs from a jsonl file; each is also
    compared pair by pair with each of `baselines` (verifier labels)."""
    _check_baselines(baselines, list(verifiers))
    pairs, same = load_pair_file(pair_file)
    results = {"pairs": len(pairs), "excluded_same": same, "pair_file": str(pair_file), "seed": None,
               "baselines": list(baselines or []), "scorers": {}}
    for name, v in verifiers.items():
        results["scorers"][name] = pairwise_accuracy(pairs, verifier_scorer(v, image_file_request, batch_size))
    out_dir = Path(out_dir)
    _write_results(out_dir, results)
    return results


def run_rewardbench(models: dict[str, str], out_dir: str | Path, samples: int = 200, seed: int = 987_654,
                    image_tokenizer_dir: str | None = None, max_new_tokens: int = 320,
                    scalars: dict[str, str] | None = None, avg_k: int = 0, verifiers: dict | None = None,
                    expected_score: bool = False, expected_points: bool = False,
                    baselines: list[str] | None = None) -> dict:
    """`models`: reasoning reward models by name; `scalars`: scalar Bradley-Terry models by name;
    `verifiers`: any `earl.verify` verifiers by label, judging decoded images with the scene graphs.
    `avg_k` > 1, `expected_score` and `expected_points` add each reasoning model's Avg@k, E[score]
    and E[points] readouts. Every scorer is also compared, pair by pair, with each of `baselines`
    (scorer names; default: the scalar models)."""
    readouts = ("written", *(["expected_score"] if expected_score else []),
                *(["expected_points"] if expected_points else []))
    labels = {"written": "", "expected_score": " E[score]", "expected_points": " E[points]"}
    names = ["oracle", *(m + labels[r] for m in models for r in readouts),
             *([f"{m} Avg@{avg_k}" for m in models] if avg_k > 1 else []), *(scalars or {}), *(verifiers or {})]
    _check_baselines(baselines, names)
    editors = {name: UnifiedEditor.from_pretrained(d) for name, d in models.items()}
    scalar_models = {name: ScalarRewardModel.load(d) for name, d in (scalars or {}).items()}
    if editors or scalar_models:
        first = next(iter([*editors.values(), *(m.editor for m in scalar_models.values())]))
        tok, size = first.image_tokenizer, first.config.image_size
    else:
        tok, size = VQTokenizer.from_pretrained(image_tokenizer_dir or "checkpoints/shapes-editor/image_tokenizer"), 64
    drawn, pairs = held_out_samples_and_pairs(tok, samples, seed, size)
    out_dir = Path(out_dir)
    earlier = _earlier_scorers(out_dir / "rewardbench.json", samples, seed, len(pairs))
    results = {"pairs": len(pairs), "samples": samples, "seed": seed,
               "baselines": list(baselines if baselines is not None else (scalars or {})),
               "scorers": {"oracle": pairwise_accuracy(pairs, lambda ex: [e["score"] for e in ex])}}

    def judged(name: str, source: dict | None, judge) -> None:
        """The scorer's result: reused from the earlier run when its source is the same (never when
        None), else computed; both files are rewritten after each one, so a stopped run keeps what it
        finished."""
        old = earlier.get(name)
        # a result from before per-pair outcomes were kept cannot be compared pair by pair: judge it again
        reuse = source is not None and old is not None and old.get("source") == source and "hits" in old
        results["scorers"][name] = old if reuse else {**judge(), "source": source}
        _write_results(out_dir, results)

    for name, ed in editors.items():
        source = {"model": weights_fingerprint(models[name]), "max_new_tokens": max_new_tokens}
        greedy: dict = {}  # every greedy readout of this model comes from one generation

        def read(examples, readout, ed=ed, greedy=greedy):
            if greedy.get("examples") != [id(e) for e in examples]:
                greedy["values"], greedy["points"] = scoring.greedy_readouts(ed, examples, max_new_tokens, readouts)
                greedy["examples"] = [id(e) for e in examples]
            return greedy["values"][readout]

        for readout in readouts:
            extra = {} if readout == "written" else {"readout": readout}
            judged(name + labels[readout], {**source, **extra},
                   lambda r=readout, read=read, greedy=greedy: {
                       **pairwise_accuracy(pairs, lambda ex: read(ex, r)),
                       **({"points": greedy["points"]} if r == "written" else {})})
        if avg_k > 1:
            judged(f"{name} Avg@{avg_k}", {**source, "k": avg_k},
                   lambda ed=ed: pairwise_accuracy(pairs, scoring.rrm_scorer(ed, max_new_tokens, k=avg_k)))
    for name, m in scalar_models.items():
        judged(name, {"model": weights_fingerprint(scalars[name])},
               lambda m=m: pairwise_accuracy(pairs, scalar_scorer(m)))
    if verifiers:
        to_request = shapes_request(tok, drawn, seed)
        for name, v in verifiers.items():  # served models can change behind a URL: always judged again
            judged(name, None, lambda v=v: pairwise_accuracy(pairs, verifier_scorer(v, to_request)))
    _write_results(out_dir, results)
    return results


def _write_results(out_dir: Path, results: dict) -> None:
    atomic_write_json(out_dir / "rewardbench.json", results)
    atomic_write_text(out_dir / "rewardbench.md", format_table(results) + "\n")


def weights_fingerprint(model_dir: str | Path) -> str:
    """sha256 over a model directory's weight files (names and contents): a retrained model differs."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.rglob("*.safetensors")):
        h.update(f.relative_to(d).as_posix().encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def _earlier_scorers(path: Path, samples: int, seed: int, n_pairs: int) -> dict:
    """Scorer results of an earlier run on the same held-out pairs, by name ({} if none or unreadable)."""
    try:
        old = read_json(path)
    except (DataError, OSError):
        return {}
    if not isinstance(old, dict) or (old.get("samples"), old.get("seed"), old.get("pairs")) != (samples, seed, n_pairs):
        return {}
    return {k: v for k, v in (old.get("scorers") or {}).items() if isinstance(v, dict)}


def _paired_lines(results: dict) -> list[str]:
    """Each scorer minus each baseline on the same pairs (`paired_difference`), for the baselines judged
    so far. Every scorer has its per-pair outcomes: a result from before they were kept is judged
    again, never reused."""
    scorers = results["scorers"]
    rows = []
    for base in results.get("baselines", []):
        if base not in scorers:  # not judged yet: the files a run writes after each scorer hold what it has
            continue
        for name, r in scorers.items():
            if name != base:
                d = paired_difference(r["hits"], scorers[base]["hits"])
                rows.append(f"| {name} - {base} | {d['difference']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f}) |")
    if not rows:
        return []
    return ["", "Paired differences in accuracy (the same pairs; mean per-pair difference, 95% t interval):", "",
            "| comparison | difference (95% CI) |", "|---|---:|", *rows]


def format_table(results: dict) -> str:
    def cell(s):
        lo, hi = s["ci"]
        return f"{s['accuracy']:.3f} ({lo:.2f}-{hi:.2f})"

    where = (f"held-out ShapesEdit preference pairs (seed {results['seed']}" if results.get("pair_file") is None
             else f"preference pairs from {results['pair_file']} ({results['excluded_same']} \"same\" excluded")
    lines = [f"Pairwise accuracy on {results['pairs']} {where}; a failed judgement or a tie counts as wrong)", "",
             "| scorer | accuracy (95% CI) | failed | ties |", "|---|---:|---:|---:|"]
    for name, r in results["scorers"].items():
        lines.append(f"| {name} | {cell(r['overall'])} | {r['failed']} | {r.get('ties', 'n/a')} |")
    lines += _paired_lines(results)
    cats = sorted({k for r in results["scorers"].values() for k in r["per_category"]})
    if len(cats) > 1:
        lines += ["", "| category | " + " | ".join(results["scorers"]) + " |", "|---|" + "---:|" * len(results["scorers"])]
        for k in cats:
            lines.append(f"| {k} | " + " | ".join(f"{r['per_category'][k]['accuracy']:.2f}" if k in r["per_category"]
                                                 else "n/a" for r in results["scorers"].values()) + " |")
    with_points = {name: r["points"] for name, r in results["scorers"].items() if r.get("points")}
    if with_points:
        def pct(x):
            return "n/a" if x is None else f"{x:.2f}"

        lines += ["", "Verdicts per principle type (greedy): accuracy on the points the oracle passes; of those it "
                  "fails, the share failed too, and the share whose reason matches the oracle's", "",
                  "| model | principle type | passing points | accuracy | failing points | caught | reason right |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, cats in with_points.items():
            for cat, c in cats.items():
                lines.append(f"| {name} | {cat} | {c['passing_points']} | {pct(c['passing_accuracy'])} | "
                             f"{c['failing_points']} | {pct(c['failing_caught'])} | {pct(c['failing_reason_right'])} |")
    kinds = sorted({k for r in results["scorers"].values() for k in r["per_rejected_kind"]})
    if not kinds:
        return "\n".join(lines)
    lines += ["", "| rejected candidate | " + " | ".join(results["scorers"]) + " |",
              "|---|" + "---:|" * len(results["scorers"])]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{r['per_rejected_kind'][k]['accuracy']:.2f}"
                                             if k in r["per_rejected_kind"] else "n/a"
                                             for r in results["scorers"].values()) + " |")
    return "\n".join(lines)
