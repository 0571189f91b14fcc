"""Training the decomposition agent with trl: `earl train decomposer-sft` then `earl train decomposer-grpo`.

The decomposer is a text policy (image tokens in, plan text out), the case trl is built for: SFT
with `trl.SFTTrainer` on (prompt, ground-truth plan) pairs, then GRPO with `trl.GRPOTrainer` and
reward functions from `earl.agents.rewards` (format, F1 over triples as ImageEdit-R1 does, and the
closed-loop reward that executes the plan with the editor and judges the final image). Prompts are
plain strings because the decomposer's tokenizer exposes image codes as tokens
(`earl.agents.unified`); the model is the bundled editor's backbone, grown by one token (`|`).

Data: ShapesEdit samples generated on the fly from (split, n, seed); the ground-truth plan of each
is its `program` (`earl.agents.shapes.program_plan`). Simple samples are mixed in so that a simple
instruction decomposes into its one step.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import torch

from earl.agents.rewards import make_reward_functions
from earl.agents.shapes import program_plan
from earl.agents.unified import add_plan_tokens, plan_text, prompt_text
from earl.config import to_dict
from earl.errors import ConfigError
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.pipeline import default_checkpoint
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render

log = logging.getLogger(__name__)


@dataclass
class DecomposerData:
    complex_samples: int = field(default=12000, metadata={"help": "complex ShapesEdit training samples"})
    simple_samples: int = field(default=3000, metadata={"help": "simple samples (their plan is one step)"})
    seed: int = 0


@dataclass
class DecomposerSFTRecipe:
    out_dir: str = "runs/decomposer_sft"
    init_from: str | None = field(default=None, metadata={"help": "editor or decomposer directory (default: bundled editor)"})
    data: DecomposerData = field(default_factory=DecomposerData)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 50
    seed: int = 0
    log_every: int = 25
    save_every: int = 500


@dataclass
class DecomposerGRPORecipe:
    out_dir: str = "runs/decomposer_grpo"
    init_from: str = field(default="runs/decomposer_sft/model", metadata={"help": "an SFT-trained decomposer directory"})
    data: DecomposerData = field(default_factory=lambda: DecomposerData(complex_samples=2000, simple_samples=200, seed=1))
    # reward terms and weights: format (0/1), f1 (ImageEdit-R1's F1 over triples), closed_loop (execute the
    # plan with the editor, judge the final image with the oracle: 1 on success), closed_loop_rrm (the same,
    # judged by the reasoning reward model's E[points] instead of the oracle)
    rewards: dict[str, float] = field(default_factory=lambda: {"format": 0.1, "f1": 1.0})
    editor: str | None = field(default=None, metadata={"help": "editor for closed-loop rewards (default: bundled)"})
    rrm: str = "checkpoints/shapes-rrm-lenient"
    steps: int = 200
    batch_size: int = 32  # completions per step (prompts x num_generations)
    num_generations: int = 8
    temperature: float = 1.0
    beta: float = 0.0  # KL to the reference model (trl's default 0)
    lr: float = 5e-6
    seed: int = 0
    log_every: int = 5
    save_every: int = 50


def build_dataset(editor: UnifiedEditor | None, data: DecomposerData, part: str = "train",
                  prompts: Callable[[list], list[dict]] | None = None) -> datasets.Dataset:
    """Rows of prompt columns, completion (the ground-truth plan), gold_plan, instruction and the sample's scenes.

    `prompts(samples) -> one dict of prompt columns per sample`; by default the editor's plain-string prompt
    with the source image as codes. Other policies bring their own (the VLM decomposer: a chat prompt and
    the image, `earl.train.vlm_decomposer`), so every trainer gets the same samples and reward columns."""
    prompts = prompts or partial(_editor_prompts, editor)
    rows = []
    for split, n in (("complex", data.complex_samples), ("simple", data.simple_samples)):
        samples = list(generate_samples(split, n, data.seed, part=part))
        for start in range(0, len(samples), 256):
            chunk = samples[start : start + 256]
            for s, p in zip(chunk, prompts(chunk)):
                plan = program_plan(s.source_scene, s.program)
                rows.append({**p, "completion": plan_text(plan), "gold_plan": json.dumps(plan.to_dict()),
                             "instruction": s.instruction, "id": s.id, "category": s.category,
                             "source_scene": json.dumps(s.source_scene.to_dict()),
                             "target_scene": json.dumps(s.target_scene.to_dict())})
    random.Random(data.seed).shuffle(rows)
    return datasets.Dataset.from_list(rows)


def _editor_prompts(editor: UnifiedEditor, samples: list) -> list[dict]:
    codes = editor.encode_images([editor.preprocess(render(s.source_scene))[0] for s in samples])
    return [{"prompt": prompt_text(editor, s.instruction, c)} for s, c in zip(samples, codes)]


def _save(editor: UnifiedEditor, model, out: Path) -> Path:
    editor.backbone = model
    return editor.save_pretrained(out)


def _trainer_args(cls, recipe, out: Path, **kw):
    """trl config shared by the decomposer trainers; `kw` adds to it or overrides it (a VLM trains on GPUs)."""
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "logs"))  # transformers 5 reads the log dir from here
    args = dict(output_dir=str(out / "trainer"), max_steps=recipe.steps, learning_rate=recipe.lr, seed=recipe.seed,
                logging_steps=recipe.log_every, save_steps=recipe.save_every, save_total_limit=2, use_cpu=True,
                report_to=["tensorboard"], dataloader_num_workers=0)
    return cls(**{**args, **kw})


def train_decomposer_sft(recipe: DecomposerSFTRecipe, resume: bool = False) -> dict:
    """SFT of the decomposer with `trl.SFTTrainer` (loss on the plan only); writes OUT/model."""
    from trl import SFTConfig, SFTTrainer

    out = Path(recipe.out_dir)
    torch.manual_seed(recipe.seed)
    editor = add_plan_tokens(UnifiedEditor.from_pretrained(recipe.init_from or default_checkpoint()))
    train = build_dataset(editor, recipe.data).select_columns(["prompt", "completion"])
    args = _trainer_args(SFTConfig, recipe, out, per_device_train_batch_size=recipe.batch_size,
                         warmup_steps=recipe.warmup_steps, lr_scheduler_type="cosine", completion_only_loss=True,
                         max_length=None, eos_token=editor.text_tokenizer.eos_token)  # pads with the tokenizer's own
    trainer = SFTTrainer(model=editor.backbone, args=args, train_dataset=train, processing_class=editor.text_tokenizer)
    return _train_and_save(trainer, out, recipe, resume, logged="loss",
                           save=lambda path: _save(editor, trainer.model, path))


def train_decomposer_grpo(recipe: DecomposerGRPORecipe, resume: bool = False) -> dict:
    """GRPO of an SFT decomposer with `trl.GRPOTrainer` and earl's reward functions; writes OUT/model."""
    from trl import GRPOConfig, GRPOTrainer

    if recipe.batch_size % recipe.num_generations:
        raise ConfigError(f"batch_size {recipe.batch_size} must be a multiple of num_generations {recipe.num_generations}")
    out = Path(recipe.out_dir)
    torch.manual_seed(recipe.seed)
    editor = UnifiedEditor.from_pretrained(recipe.init_from)
    train = build_dataset(editor, recipe.data)
    reward_funcs, weights = make_reward_functions(recipe.rewards, editor_dir=recipe.editor, rrm_dir=recipe.rrm)
    tok = editor.text_tokenizer
    args = _trainer_args(GRPOConfig, recipe, out, per_device_train_batch_size=recipe.batch_size,
                         num_generations=recipe.num_generations, temperature=recipe.temperature, beta=recipe.beta,
                         max_completion_length=96, reward_weights=weights, log_completions=False,
                         generation_kwargs={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    trainer = GRPOTrainer(model=editor.backbone, reward_funcs=reward_funcs, args=args, train_dataset=train,
                          processing_class=tok)
    return _train_and_save(trainer, out, recipe, resume, logged="reward",
                           save=lambda path: _save(editor, trainer.model, path))


def _train_and_save(trainer, out: Path, recipe, resume: bool, logged: str,
                    save: Callable[[Path], object] | None = None) -> dict:
    """Train (from the newest trainer checkpoint when resuming), save OUT/model with `save(path)` (default
    `trainer.save_model`: the model and its processing class, gathered from every process under DeepSpeed),
    and keep the log rows that carry `logged` in OUT/trainer_log.json (the last three in final_metrics.json).
    Every process saves (ZeRO-3 gathers the weights collectively); only the main one writes the json files."""
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(out) if resume else None)
    (save or (lambda path: trainer.save_model(str(path))))(out / "model")
    log = [r for r in trainer.state.log_history if logged in r]
    # the wall time is the cost a comparison of recipes reads (of this process's run, when resumed)
    report = {"out": str(out / "model"), "train_runtime_s": round(result.metrics.get("train_runtime", float("nan")), 1),
              "log": log[-3:]}
    if not trainer.is_world_process_zero():
        return report
    atomic_write_json(out / "model" / "recipe.json", to_dict(recipe))
    atomic_write_json(out / "trainer_log.json", log)
    atomic_write_json(out / "final_metrics.json", report)
    return report


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = out / "trainer"
    return get_last_checkpoint(str(d)) if d.is_dir() else None

