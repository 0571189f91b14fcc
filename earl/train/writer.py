"""SFT of the principle writer on ShapesEdit (`earl.rrm.writer.UnifiedPrincipleWriter`).

Each training example is one ShapesEdit sample seen as a user would give it, (source image,
instruction), and its label the exact points of `shapes_points(source, target)`, written in the
numbered form the reward model reads (`earl.rrm.verifier.points_text`). The target scene makes the
label and is never part of the prompt. Each sample's points are drawn with a seed of their own, so
the phrasings and the choice among equally good preservation points vary as they do in the reward
model's training.

The model starts from an editor directory (`model.init_from`; by default the bundled reward model,
whose vocabulary already holds every word of the points and whose backbone already reads the
image tokens cell by cell), with its word vocabulary grown by the writer's prompts
(`UnifiedEditor.with_words`); trained with `train_lm`, the loop of every SFT here, and evaluated
on held-out samples by how many exact points the greedy writing matches (`earl.rrm.agreement`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from earl.config import to_dict
from earl.errors import ConfigError
from earl.io import atomic_write_json
from earl.layout import Example
from earl.model import UnifiedEditor
from earl.rrm.agreement import Agreement
from earl.rrm.principles import point_pool, shapes_points
from earl.rrm.prompt import points_text
from earl.rrm.writer import PROMPT_PREFIX, UnifiedPrincipleWriter, writer_prompt
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render
from earl.train.accelerator import make_accelerator
from earl.train.lm import train_lm
from earl.train.sections import OptimSection, RunSection
from tokenizer import pil_to_tensor


@dataclass
class WriterModelSection:
    init_from: str = "checkpoints/shapes-rrm-lenient"  # an editor directory (an editor or a reward model)


@dataclass
class WriterDataSection:
    samples: int = 12000  # training samples, split evenly over `splits` (ShapesEdit train part)
    splits: list[str] = field(default_factory=lambda: ["simple", "complex"])
    seed: int = 0
    eval_samples: int = 60  # held-out samples per split (another seed), written greedily at each evaluation
    max_new_tokens: int = 240

    def __post_init__(self):
        if self.samples < 1 or self.eval_samples < 0:
            raise ValueError(f"data.samples must be >= 1 and data.eval_samples >= 0, got {self.samples}, "
                             f"{self.eval_samples}")


@dataclass
class WriterRecipe:
    out_dir: str
    model: WriterModelSection = field(default_factory=WriterModelSection)
    data: WriterDataSection = field(default_factory=WriterDataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)


def draw_samples(splits: list[str], n: int, seed: int, part: str = "train", image_size: int = 64) -> list:
    """`n` ShapesEdit samples, as even as possible over `splits` (the fixed test sets with part="test")."""
    per = [n // len(splits) + (i < n % len(splits)) for i in range(len(splits))]
    return [s for split, k in zip(splits, per) for s in generate_samples(split, k, seed, part, image_size)]


def label_points(sample, seed: int, k: int):
    """The exact points of sample k: the training label and the yardstick."""
    return shapes_points(sample.source_scene, sample.target_scene, seed=seed * 100_003 + k)


@torch.no_grad()
def _source_codes(image_tokenizer, samples, batch: int = 256) -> list[torch.Tensor]:
    out = []
    for s in range(0, len(samples), batch):
        ims = [render(x.source_scene) for x in samples[s : s + batch]]
        out += list(image_tokenizer.encode(pil_to_tensor(ims)).cpu())
    return out


def writer_example(layout, instruction: str, codes, points) -> Example:
    prompt = writer_prompt(layout, instruction, codes)
    completion = [*layout.encode_text(points_text(points)), layout.ids.eos]
    return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt))


def measure_writer(writer, samples: list, seed: int) -> dict:
    """Agreement of `writer`'s points with the exact ones (`label_points(sample, seed, k)`), from
    (source image, instruction) alone."""
    written = writer.write([render(s.source_scene) for s in samples], [s.instruction for s in samples])
    agree = Agreement()
    for k, (s, w) in enumerate(zip(samples, written)):
        agree.add(w, label_points(s, seed, k), point_pool(s.source_scene, s.target_scene))
    return agree.summary()


def train_principle_writer(cfg: WriterRecipe, resume: bool = False, progress: bool = True) -> dict:
    from accelerate.utils import set_seed

    out = Path(cfg.out_dir)
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    set_seed(cfg.run.seed)
    if not Path(cfg.model.init_from).is_dir():
        raise ConfigError(f"model.init_from: {cfg.model.init_from} not found (expected an editor directory)")
    start = UnifiedEditor.from_pretrained(cfg.model.init_from)
    size = start.config.image_size
    train = draw_samples(cfg.data.splits, cfg.data.samples, cfg.data.seed, image_size=size)
    held_out = draw_samples(cfg.data.splits, cfg.data.eval_samples * len(cfg.data.splits), cfg.data.seed + 1_000_003,
                            image_size=size)
    labels = [label_points(s, cfg.data.seed, k) for k, s in enumerate(train)]
    corpus = [f"{PROMPT_PREFIX} {s.instruction}" for s in train + held_out] + [points_text(p) for p in labels]
    corpus += [points_text(label_points(s, cfg.data.seed + 1_000_003, k)) for k, s in enumerate(held_out)]
    # a reward model's words include `<` and `</` (from `<score>`), which `with_words` keeps only when
    # the new corpus has them too
    editor = start.with_words(corpus + ["<score> </score>"])
    layout = editor.layout
    codes = _source_codes(editor.image_tokenizer, train)
    seqs = [writer_example(layout, s.instruction, c, p) for s, c, p in zip(train, codes, labels)]
    random.Random(cfg.data.seed).shuffle(seqs)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_json(out / "recipe.json", to_dict(cfg))
    loader = DataLoader(seqs, batch_size=cfg.run.batch_size, shuffle=True, drop_last=len(seqs) >= cfg.run.batch_size,
                        collate_fn=layout.collate)
    accelerator.print(f"principle writer SFT: {len(seqs)} examples, longest {max(len(e.input_ids) for e in seqs)} tokens")

    def evaluate(model, step):
        if not accelerator.is_main_process or not held_out:
            return {}
        editor.backbone = accelerator.unwrap_model(model)
        editor.backbone.eval()
        s = measure_writer(UnifiedPrincipleWriter(editor, cfg.data.max_new_tokens), held_out, cfg.data.seed + 1_000_003)
        metrics = {"eval/exact_points_matched": s["exact_points_matched"]["share"],
                   "eval/failed_requests": s["failed_requests"]["share"],
                   "eval/written_valid": s["written_valid"]["share"] or 0.0}
        metrics.update({f"eval/matched_{c}": v["share"] for c, v in s["per_category"].items() if v["share"] is not None})
        return metrics

    return train_lm(cfg, accelerator, editor, loader, "principle_writer", resume, progress, evaluate)


def measure_on_test_sets(writer, n: int = 200, splits=("simple", "complex"), out: str | None = None,
                         label_seed: int = 1_000_003) -> dict:
    """Agreement on the first `n` samples of each fixed ShapesEdit test set (written per split, and a
    perfect writer that knows the answer but not the label's seed beside it: the ceiling that the
    random choice among equally good points leaves); written to `out` (JSON) if given."""
    report = {}
    for split in splits:
        samples = draw_samples([split], n, 0, part="test")
        ceiling = Agreement()
        for k, s in enumerate(samples):
            ceiling.add(shapes_points(s.source_scene, s.target_scene, seed=999_999 + k), label_points(s, label_seed, k),
                        point_pool(s.source_scene, s.target_scene))
        report[split] = {"writer": measure_writer(writer, samples, label_seed), "perfect_writer_other_seed": ceiling.summary()}
    if out is not None:
        atomic_write_json(out, report)
    return report
