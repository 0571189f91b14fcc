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

Run and optimiser settings are the `run` and `optim` sections every trainer reads (`trl_args` maps
them onto trl's config); one GRPO recipe serves both policies (`policy: unified` here, `policy: vlm`
in `earl.train.vlm_decomposer`).
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
from accelerate import PartialState

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
from earl.train.lora import lora_config, save_model, start_base
from earl.train.sections import LoraSection, OptimSection, RunSection, settle_grad_accum

log = logging.getLogger(__name__)


@dataclass
class DecomposerData:
    complex_samples: int = field(default=12000, metadata={"help": "complex ShapesEdit training samples"})
    simple_samples: int = field(default=3000, metadata={"help": "simple samples (their plan is one step)"})
    seed: int = 0


def trl_optim(lr: float, warmup_steps: int = 0, schedule: str = "cosine") -> OptimSection:
    """An `optim` section holding trl's own defaults (AdamW betas (0.9, 0.999), no weight decay, clipping at 1,
    decay to 0), the decomposer recipes' defaults."""
    return OptimSection(lr=lr, min_lr=0.0, warmup_steps=warmup_steps, weight_decay=0.0, betas=(0.9, 0.999),
                        grad_clip=1.0, schedule=schedule)


def check_trl_run(run: RunSection) -> None:
    """The run settings trl cannot take from the `run` section, refused rather than ignored."""
    if run.mixed_precision != "no":
        raise ValueError(f"run.mixed_precision: {run.mixed_precision!r}; the decomposer trainers take precision "
                         "from the weights (policy vlm: dtype), so leave it 'no'")


@dataclass
class DecomposerSFTRecipe:
    out_dir: str = "runs/decomposer_sft"
    init_from: str | None = field(default=None, metadata={"help": "editor or decomposer directory (default: bundled editor)"})
    data: DecomposerData = field(default_factory=DecomposerData)
    run: RunSection = field(default_factory=lambda: RunSection(steps=1500, batch_size=32, log_every=25, save_every=500))
    optim: OptimSection = field(default_factory=lambda: trl_optim(5e-4, warmup_steps=50))
    # LoRA adapters (trl's peft_config) on the frozen decomposer; null: every weight. The plan token added to
    # the vocabulary trains only where lora.modules_to_save names [embed_tokens, lm_head]
    lora: LoraSection | None = None

    def __post_init__(self):
        check_trl_run(self.run)


POLICIES = ("unified", "vlm")  # the unified model writing after the image tokens; a transformers chat VLM
# what a policy's recipe leaves unset (None) takes: where it starts, its completion budget in tokens
POLICY_DEFAULTS = {
    "unified": {"out_dir": "runs/decomposer_grpo", "init_from": "runs/decomposer_sft/model", "max_completion_length": 96},
    "vlm": {"out_dir": "runs/decomposer_vlm_grpo", "init_from": "models/Qwen2.5-VL-3B-Instruct",
            "max_completion_length": 256}}


@dataclass
class DecomposerGRPORecipe:
    """GRPO of a decomposer with trl, for either policy: `policy: unified` (`earl train decomposer-grpo`) or
    `policy: vlm` (`earl train decomposer-vlm-grpo`, `earl.train.vlm_decomposer`). Fields left null take the
    policy's defaults (`POLICY_DEFAULTS`); the `run` and `optim` defaults are the unified policy's, and a vlm
    recipe states its own (recipes/agents/decomposer_vlm_grpo.yaml)."""

    policy: str = field(default="unified", metadata={"help": "unified (the editor's backbone writing plans) or vlm "
                                                             "(a transformers image-text-to-text chat model)"})
    out_dir: str | None = field(default=None, metadata={"help": "default: runs/decomposer_grpo (unified), "
                                                                "runs/decomposer_vlm_grpo (vlm)"})
    init_from: str | None = field(default=None, metadata={
        "help": "unified: an SFT-trained decomposer directory (default runs/decomposer_sft/model); vlm: a local "
                "image-text-to-text checkpoint directory, nothing is downloaded (default models/Qwen2.5-VL-3B-Instruct)"})
    data: DecomposerData = field(default_factory=lambda: DecomposerData(complex_samples=2000, simple_samples=200, seed=1))
    # reward terms and weights: format (0/1), f1 (ImageEdit-R1's F1 over triples), closed_loop (execute the
    # plan with the editor, judge the final image with the oracle: 1 on success), closed_loop_rrm (the same,
    # judged by the reasoning reward model's E[points] instead of the oracle)
    rewards: dict[str, float] = field(default_factory=lambda: {"format": 0.1, "f1": 1.0})
    editor: str | None = field(default=None, metadata={"help": "editor for closed-loop rewards (default: bundled)"})
    rrm: str = "checkpoints/shapes-rrm-lenient"
    num_generations: int = 8  # run.batch_size (completions per step and process) is prompts x num_generations
    temperature: float = 1.0
    beta: float = 0.0  # KL to the reference model (trl's default 0: no reference copy in memory)
    max_completion_length: int | None = field(default=None, metadata={"help": "tokens per plan (default: unified "
                                                                                "96, vlm 256)"})
    # vlm only
    data_path: str | None = field(default=None, metadata={"help": "vlm: jsonl/parquet of {image, instruction, "
                                                                  "plan} rows instead of ShapesEdit samples"})
    image_size: int | None = field(default=448, metadata={"help": "vlm: resize images to this square size "
                                                                  "(ShapesEdit images are 64x64); None keeps them"})
    dtype: str = field(default="bfloat16", metadata={"help": "vlm: weights' dtype, bfloat16 or float32"})
    run: RunSection = field(default_factory=lambda: RunSection(steps=200, batch_size=32, log_every=5, save_every=50))
    optim: OptimSection = field(default_factory=lambda: trl_optim(5e-6, schedule="linear"))
    # LoRA adapters (trl's peft_config) on the frozen policy; null: every weight. With beta > 0 trl then takes
    # the reference from the base with the adapters disabled instead of a second copy
    lora: LoraSection | None = None

    def __post_init__(self):
        check_trl_run(self.run)
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name, value in POLICY_DEFAULTS[self.policy].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.run.batch_size % self.num_generations:
            raise ValueError(f"run.batch_size {self.run.batch_size} must be a multiple of num_generations "
                             f"{self.num_generations}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be bfloat16 or float32, got {self.dtype!r}")
        if self.policy == "unified" and self.data_path is not None:
            raise ValueError("data_path is for policy vlm (the unified decomposer trains on ShapesEdit samples)")


def check_policy(recipe: DecomposerGRPORecipe, policy: str, stage: str) -> None:
    """Refuse a recipe written for the other policy: its settings would not describe the run."""
    if recipe.policy != policy:
        other = "decomposer-vlm-grpo" if recipe.policy == "vlm" else "decomposer-grpo"
        raise ConfigError(f"policy: {recipe.policy} is trained by `earl train {other}`; `earl train {stage}` "
                          f"trains policy {policy}")


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
    """The trained decomposer at `out`: a full editor, or under LoRA its adapters and base (`earl.train.lora`)."""
    return save_model(editor, model, out)


def _peft_config(recipe, model) -> dict:
    """trl's `peft_config` argument from the recipe's `lora` section, its names checked against `model`
    before trl wraps it."""
    if recipe.lora is None:
        return {}
    return {"peft_config": lora_config(recipe.lora, model)}


def _record_base(trainer, base: Path | None) -> None:
    """Mark trl's LoRA model with its base directory, as `apply_lora` does for earl's own loops."""
    if base is not None and hasattr(trainer.model, "peft_config"):
        trainer.model.earl_base_dir = str(Path(base).resolve())


def _trainer_args(cls, recipe, out: Path, **kw):
    """trl config of the decomposer trainers from the recipe's `run` and `optim`; `kw` adds to it or overrides
    it (a VLM trains on GPUs). What trl cannot take from these sections is refused by the recipes (`check_trl_run`)."""
    run, opt = recipe.run, recipe.optim
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "logs"))  # transformers 5 reads the log dir from here
    schedule = {"lr_scheduler_type": opt.schedule}  # warm-up, then cosine or linear down to 0 ...
    if opt.min_lr > 0:  # ... or cosine down to min_lr
        schedule = {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": opt.min_lr}}
    args = dict(output_dir=str(out / "trainer"), max_steps=run.steps, per_device_train_batch_size=run.batch_size,
                gradient_accumulation_steps=settle_grad_accum(run), seed=run.seed, logging_steps=run.log_every,
                save_steps=run.save_every or run.steps, save_total_limit=run.keep_checkpoints,
                learning_rate=opt.lr, warmup_steps=opt.warmup_steps, weight_decay=opt.weight_decay,
                adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], max_grad_norm=opt.grad_clip, **schedule,
                use_cpu=True, report_to=["tensorboard"] + (["wandb"] if run.wandb else []), dataloader_num_workers=0)
    return cls(**{**args, **kw})


def train_decomposer_sft(recipe: DecomposerSFTRecipe, resume: bool = False) -> dict:
    """SFT of the decomposer with `trl.SFTTrainer` (loss on the plan only); writes OUT/model."""
    from trl import SFTConfig, SFTTrainer

    out = Path(recipe.out_dir)
    torch.manual_seed(recipe.run.seed)
    editor = add_plan_tokens(UnifiedEditor.from_pretrained(recipe.init_from or default_checkpoint()))
    train = build_dataset(editor, recipe.data).select_columns(["prompt", "completion"])
    args = _trainer_args(SFTConfig, recipe, out, completion_only_loss=True, max_length=None,
                         eos_token=editor.text_tokenizer.eos_token)  # pads with the tokenizer's own
    peft = _peft_config(recipe, editor.backbone)
    # the base of the adapters: the start with its plan token, saved once (out/base)
    base = start_base(editor, None, out, is_main=PartialState().is_main_process) if peft else None
    trainer = SFTTrainer(model=editor.backbone, args=args, train_dataset=train, processing_class=editor.text_tokenizer,
                         **peft)
    _record_base(trainer, base)
    return _train_and_save(trainer, out, recipe, resume, logged="loss",
                           save=lambda path: _save(editor, trainer.model, path))


def train_decomposer_grpo(recipe: DecomposerGRPORecipe, resume: bool = False) -> dict:
    """GRPO of an SFT decomposer (policy unified) with `trl.GRPOTrainer` and earl's reward functions; writes
    OUT/model."""
    from trl import GRPOConfig, GRPOTrainer

    check_policy(recipe, "unified", "decomposer-grpo")
    if recipe.run.deepspeed or recipe.run.gradient_checkpointing:
        raise ConfigError("run.deepspeed and run.gradient_checkpointing are for policy vlm (the unified decomposer "
                          "trains on the CPU)")
    out = Path(recipe.out_dir)
    torch.manual_seed(recipe.run.seed)
    editor = UnifiedEditor.from_pretrained(recipe.init_from)
    train = build_dataset(editor, recipe.data)
    reward_funcs, weights = make_reward_functions(recipe.rewards, editor_dir=recipe.editor, rrm_dir=recipe.rrm)
    tok = editor.text_tokenizer
    args = _trainer_args(GRPOConfig, recipe, out, num_generations=recipe.num_generations,
                         temperature=recipe.temperature, beta=recipe.beta,
                         max_completion_length=recipe.max_completion_length, reward_weights=weights, log_completions=False,
                         generation_kwargs={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    peft = _peft_config(recipe, editor.backbone)
    trainer = GRPOTrainer(model=editor.backbone, reward_funcs=reward_funcs, args=args, train_dataset=train,
                          processing_class=tok, **peft)
    _record_base(trainer, Path(recipe.init_from) if peft else None)
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

