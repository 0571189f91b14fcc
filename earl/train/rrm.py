"""Cold-start SFT of the reasoning reward model on ShapesEdit: `earl train rrm-sft recipes/shapes/rrm_sft.yaml`.

Data (`earl.rrm.coldstart`): for each generated ShapesEdit sample, candidates covering every kind
of failure, seen through the image tokenizer, with traces written from the oracle's verdicts on
the sample's 10 principles. The model is an earl editor over the same image tokenizer, trained with
the loop SFT uses (`train_lm`) on `judge prompt -> verdict text`.

Evaluation on held-out samples: greedy verdicts are parsed (`parse_trace`); reported are the
parse-failure rate, per-point accuracy against the oracle, the share of the oracle's failing points
that the model also fails (a model that answers "yes" everywhere gets the base rate of passing
points as its accuracy, and 0 here), the mean absolute score error, and for traces that open with
a scan (`data.scan`) the share of its entries (background and cells) written as the oracle's, and
of the entries that name an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader

from earl.config import to_dict
from earl.errors import ConfigError
from earl.hub import resolve_model
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.rrm.coldstart import draw_examples, phrase_verdict, read_scan, split_expectation
from earl.rrm.prompt import judge_example, points_text
from earl.rrm.scoring import generate_verdicts
from earl.rrm.trace import parse_trace
from earl.text import build_word_tokenizer
from earl.train.accelerator import make_accelerator
from earl.train.lm import train_lm
from earl.train.lora import LoraSection, adapt
from earl.train.sections import OptimSection, RunSection
from earl.train.verifier_data import load_examples
from tokenizer.vq import VQTokenizer


@dataclass
class RRMModelSection:
    size: str = "shapes-tiny"
    image_tokenizer: str = "checkpoints/shapes-editor/image_tokenizer"
    image_size: int = 64
    # An editor directory to start from, as Edit-R1 starts its reward model from a pretrained VLM:
    # its backbone, image tokenizer and image size are used (size / image_tokenizer / image_size are
    # then ignored), and its vocabulary grows by the judge texts' words (`UnifiedEditor.with_words`).
    init_from: str | None = None


@dataclass
class RRMDataSection:
    samples: int = 2000  # ShapesEdit samples; each gives ~9 candidates
    splits: list[str] = field(default_factory=lambda: ["simple", "complex"])
    seed: int = 0
    eval_samples: int = 40  # held-out samples (another seed) judged greedily at each evaluation
    max_new_tokens: int = 320
    # write each point's reason before its verdict (`k. reason - yes`), so the verdict is conditioned
    # on what the model described; false gives the verdict-first order (`k. yes - reason`)
    reason_first: bool = True
    # loss weight of the tokens of failing points' lines (reason and verdict); ~6 balances the ~15% of
    # points that fail against those that pass. 1 weighs every token alike.
    failing_point_weight: float = 1.0
    # loss weight of only the observation in failing points' reason-first lines (`r1c2 nothing` in
    # `3. r1c2 nothing , expected small red circle - no`): the words that must come from the image or
    # the scan, not the question; unlike failing_point_weight it leaves the verdicts' weights alone.
    # Multiplies failing_point_weight where both are set.
    failing_observation_weight: float = 1.0
    # loss weight of the opening scan line (data.scan)
    scan_weight: float = 1.0
    # open each trace with the oracle's description of the edited image, background then every cell in
    # reading order (`earl.rrm.coldstart.scene_scan`), so reasons copy from it; needs max_new_tokens ~320
    scan: bool = False
    # with scan: reasons in the scan's words ("r2c1 small red circle", `earl.rrm.coldstart.scan_form`),
    # so each is a copy of a scan entry rather than a lookup from "row 2, column 1"
    quote_scan: bool = False
    # with quote_scan: each reason followed by what its point expects ("r1c2 nothing , expected small
    # red circle - no", `earl.rrm.coldstart.expectation`), so the verdict compares two adjacent phrases
    expect: bool = False
    # the share of failing points that the cold start's verifier passes (`earl.rrm.coldstart.lenient_verdicts`):
    # the training traces' verdicts and scores are a lenient verifier's, their reasons still what the
    # oracle saw; the held-out evaluation keeps the oracle's verdicts. 0 is the exact oracle.
    verifier_miss: float = 0.0
    # folders of on-policy judge examples (`earl data verifier`: traces on the policy's own images,
    # labelled by a teacher) trained on beside the cold start's; their teacher labels are counted
    onpolicy: list[str] = field(default_factory=list)
    onpolicy_repeat: int = 1  # each on-policy example this many times per epoch (few, and the ones that matter)

    def __post_init__(self):
        if self.onpolicy_repeat < 1:
            raise ValueError(f"data.onpolicy_repeat must be >= 1, got {self.onpolicy_repeat}")
        if self.samples < 0 or (self.samples == 0 and not self.onpolicy):
            raise ValueError(f"data.samples must be > 0 (or 0 with data.onpolicy folders), got {self.samples}")
        if not 0.0 <= self.verifier_miss < 1.0:
            raise ValueError(f"data.verifier_miss must be in [0, 1) (the share of failing points passed), got "
                             f"{self.verifier_miss}")
        for name in ("failing_point_weight", "failing_observation_weight", "scan_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"data.{name} must be > 0 (1 weighs every token alike), got {getattr(self, name)}")
        if self.failing_observation_weight != 1.0 and not self.reason_first:
            raise ValueError("data.failing_observation_weight needs data.reason_first: true (`k. reason - yes` lines)")
        if self.scan_weight != 1.0 and not self.scan:
            raise ValueError("data.scan_weight needs data.scan: true (there is no scan line to weigh)")
        if self.quote_scan and not self.scan:
            raise ValueError("data.quote_scan needs data.scan: true (the reasons quote the scan's entries)")
        if self.expect and not self.quote_scan:
            raise ValueError("data.expect needs data.quote_scan: true (the expectation is written in the scan's words)")


@dataclass
class RRMRecipe:
    out_dir: str
    model: RRMModelSection = field(default_factory=RRMModelSection)
    data: RRMDataSection = field(default_factory=RRMDataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    # LoRA adapters on a frozen backbone (earl.train.lora); null: every weight. The vocabulary grown by the
    # judge words stays as made unless lora.modules_to_save names [embed_tokens, lm_head]
    lora: LoraSection | None = None


def build_examples(cfg: RRMRecipe, image_tokenizer, n: int, seed: int, verifier_miss: float = 0.0) -> list[dict]:
    return draw_examples(image_tokenizer, n, seed, cfg.model.image_size, cfg.data.splits, cfg.data.reason_first,
                         cfg.data.scan, cfg.data.quote_scan, cfg.data.expect, verifier_miss)[1]


def build_held_out(cfg: RRMRecipe, image_tokenizer) -> list[dict]:
    """The held-out judge examples every evaluation of a recipe uses: `data.eval_samples` samples of
    another seed than the training data's, with the oracle's verdicts (also under `data.verifier_miss`:
    the evaluation measures against the truth, not against the verifier that taught the model)."""
    return build_examples(cfg, image_tokenizer, cfg.data.eval_samples, cfg.data.seed + 1_000_003)


def _judge_corpus(examples: list[dict]) -> list[str]:
    """Every text a judge example contains: what the reward model's word vocabulary must cover."""
    corpus = [f"judge : {e['instruction']} points : {points_text(e['points'])}" for e in examples]
    return corpus + [e["trace"] + " <score> </score> 0.5" for e in examples]


def evaluate_rrm(editor, examples: list[dict], max_new_tokens: int) -> dict[str, float]:
    """Greedy verdicts on held-out examples against the oracle's: parse failures, point accuracy, score error."""
    editor.backbone.eval()
    texts = generate_verdicts(editor, [e["instruction"] for e in examples], [e["points"] for e in examples],
                              [e["source_codes"] for e in examples], [e["codes"] for e in examples],
                              max_new_tokens=max_new_tokens)
    parsed = [parse_trace(t, len(e["points"])) for t, e in zip(texts, examples)]
    ok = [(v, e) for v, e in zip(parsed, examples) if v is not None]
    points = [a == b for v, e in ok for a, b in zip(v.passed, e["passed"])]
    # most points pass (~85%), so answering "yes" everywhere already scores high point accuracy;
    # the share of failing points caught says whether the model reads the image at all
    failing = [not a for v, e in ok for a, b in zip(v.passed, e["passed"]) if not b]
    nan = float("nan")
    scans = [(read_scan(t), read_scan(e["trace"])) for t, e in zip(texts, examples)]
    cells = [(got is not None and got.get(k) == v, k != "background" and v != "nothing")
             for got, want in scans if want is not None for k, v in want.items()]
    # most cells are empty, so "nothing" everywhere already gets most entries right; the objects tell
    objects = [ok for ok, is_object in cells if is_object]
    scan_metrics = {"eval/scan_entries_right": sum(ok for ok, _ in cells) / len(cells),
                    "eval/scan_objects_right": sum(objects) / len(objects) if objects else nan} if cells else {}
    return {**scan_metrics, **expect_diagnostics(parsed, examples), "eval/parse_failed": 1 - len(ok) / max(1, len(examples)),
            "eval/point_accuracy": sum(points) / len(points) if points else nan,
            "eval/failing_points_caught": sum(failing) / len(failing) if failing else nan,
            "eval/score_mae": sum(abs(v.score - e["score"]) for v, e in ok) / len(ok) if ok else nan}


def expect_diagnostics(parsed, examples: list[dict]) -> dict[str, float]:
    """Where an `expect` model goes wrong, on the points whose oracle reason carries an expectation
    (`data.expect`; empty for other traces), each share over the parsed traces:
    - `eval/expect_wanted_right`: the expectation written as the oracle's (copied from the question);
    - `eval/expect_observed_right` (and `_failing`, on failing points only): what it says it saw is
      the oracle's observation (copied from its scan, or read from the image);
    - `eval/expect_verdict_follows_phrases`: its verdict is what comparing its own two phrases gives
      (`phrase_verdict`), right or wrong: whether the comparison step is learned."""
    import re

    def words(t):
        return re.findall(r"\w+", t.lower())

    wanted, observed, observed_failing, follows = [], [], [], []
    for v, e in zip(parsed, examples):
        oracle = parse_trace(e["trace"], len(e["points"]))
        if v is None or oracle is None:
            continue
        for i, point in enumerate(e["points"]):
            kind = point.check.get("kind")
            if phrase_verdict(kind, oracle.reasons[i]) is None:
                continue
            (seen_got, wanted_got), (seen_want, wanted_want) = (split_expectation(r) for r in (v.reasons[i],
                                                                                              oracle.reasons[i]))
            wanted.append(wanted_got is not None and words(wanted_got) == words(wanted_want))
            observed.append(words(seen_got) == words(seen_want))
            if not oracle.passed[i]:
                observed_failing.append(observed[-1])
            follows.append(phrase_verdict(kind, v.reasons[i]) == v.passed[i])

    def share(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return {"eval/expect_wanted_right": share(wanted), "eval/expect_observed_right": share(observed),
            "eval/expect_observed_right_failing": share(observed_failing),
            "eval/expect_verdict_follows_phrases": share(follows)} if wanted else {}


def evaluate_saved_rrm(cfg: RRMRecipe, model_dir: str) -> dict[str, float]:
    """The recipe's held-out evaluation (`build_held_out`) re-run on a reward model saved by `train_rrm_sft`, e.g. to add a metric to a finished run."""
    if not (Path(model_dir) / "editor.json").is_file():
        raise ConfigError(f"{model_dir}: not a model written by `earl train rrm-sft` (no editor.json)")
    editor = UnifiedEditor.from_pretrained(model_dir)
    cfg.model.image_size = editor.config.image_size
    held_out = build_held_out(cfg, editor.image_tokenizer)
    return evaluate_rrm(editor, held_out, cfg.data.max_new_tokens)


def train_rrm_sft(cfg: RRMRecipe, resume: bool = False, progress: bool = True) -> dict:
    from accelerate.utils import set_seed

    out = Path(cfg.out_dir)
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    set_seed(cfg.run.seed)
    start = None
    if cfg.model.init_from:
        init = resolve_model(cfg.model.init_from, what="model.init_from")  # a directory or a Hub id
        if not init.is_dir():
            raise ConfigError(f"model.init_from: {cfg.model.init_from} not found (expected an editor directory)")
        start = UnifiedEditor.from_pretrained(init)
        image_tokenizer, cfg.model.image_size = start.image_tokenizer, start.config.image_size
    elif not Path(cfg.model.image_tokenizer).is_dir():
        raise ConfigError(f"model.image_tokenizer: {cfg.model.image_tokenizer} not found")
    else:
        image_tokenizer = VQTokenizer.from_pretrained(cfg.model.image_tokenizer)
    train = build_examples(cfg, image_tokenizer, cfg.data.samples, cfg.data.seed, cfg.data.verifier_miss) \
        if cfg.data.samples else []
    labels = {"coldstart": len(train), "onpolicy": 0}  # teacher labels: one per image judged on all its points
    if cfg.data.onpolicy:
        onpolicy, labels["onpolicy"] = load_examples(cfg.data.onpolicy)
        train += onpolicy * cfg.data.onpolicy_repeat
    labels["total"] = labels["coldstart"] + labels["onpolicy"]
    held_out = build_held_out(cfg, image_tokenizer)
    corpus = _judge_corpus(train + held_out)
    if start is not None:
        editor = start.with_words(corpus)
    else:
        editor = UnifiedEditor.build(cfg.model.size, image_tokenizer, build_word_tokenizer(corpus),
                                     cfg.model.image_size, seed=cfg.run.seed)
    out.mkdir(parents=True, exist_ok=True)
    adapt(editor, cfg.lora, None, out, accelerator)  # the base: the start with its grown vocabulary (out/base)
    layout = editor.layout
    seqs = [judge_example(layout, e["instruction"], e["points"], e["source_codes"], e["codes"], e["trace"],
                          e["passed"], cfg.data.failing_point_weight, cfg.data.failing_observation_weight,
                          cfg.data.scan_weight) for e in train]
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_json(out / "recipe.json", to_dict(cfg))
        atomic_write_json(out / "teacher_labels.json", labels)
    loader = DataLoader(seqs, batch_size=cfg.run.batch_size, shuffle=True, drop_last=len(seqs) >= cfg.run.batch_size,
                        collate_fn=layout.collate)
    accelerator.print(f"RRM SFT: {len(seqs)} judge examples from {cfg.data.samples} samples and "
                      f"{len(cfg.data.onpolicy)} on-policy folder(s); teacher labels: {labels}")
    if cfg.data.verifier_miss:
        failing = [ok for e in train for ok, truth in zip(e["passed"], e["true_passed"]) if not truth]
        accelerator.print(f"RRM SFT: a lenient verifier wrote the traces: {sum(failing)} of {len(failing)} failing"
                          f" points passed ({sum(failing) / max(1, len(failing)):.1%}; data.verifier_miss"
                          f" {cfg.data.verifier_miss})")

    def evaluate(model, step):
        if not accelerator.is_main_process:
            return {}
        editor.backbone = accelerator.unwrap_model(model)
        return evaluate_rrm(editor, held_out, cfg.data.max_new_tokens)

    metrics = train_lm(cfg, accelerator, editor, loader, "rrm_sft", resume, progress, evaluate)
    return {**metrics, "teacher_labels": labels["total"]}
