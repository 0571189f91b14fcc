"""A recipe's shared sections: `run` and `optim`, which every trainer reads, and `lora`, which the
editor's, the reward model's and the decomposer's trainers take.

Every training stage (the editor's SFT and GRPO, the reward models, the image tokenizer, the
decomposer trained with trl) takes its steps, batch size, seed, cadences and its optimiser and
schedule from `run` and `optim`, so one number has one name whichever stage reads it; `lora`
(absent: full fine-tuning) has one meaning wherever it appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earl.errors import ConfigError

SCHEDULES = ("cosine", "linear")  # what follows the warm-up (`OptimSection.schedule`)

@dataclass
class OptimSection:
    """Optimiser and schedule shared by the recipes: AdamW (weight decay on matrices only), a linear warm-up
    over `warmup_steps`, then `schedule` down to `min_lr` at the last step."""

    lr: float = 3e-4
    min_lr: float = 3e-5  # the schedule's floor
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # after the warm-up: "cosine" decays to min_lr; "linear" decays in a straight line to 0 (min_lr must be 0)
    schedule: str = "cosine"

    def __post_init__(self):
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "linear" and self.min_lr != 0:
            raise ValueError(f"schedule 'linear' decays to 0; set min_lr: 0 (got {self.min_lr}) or use 'cosine'")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class RunSection:
    """How a run executes: precision, accumulation, distributed backend, logging cadence."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per process, per micro-step
    # micro-steps per optimizer step. null: the trainer's own value - 1 where a step is one batch (SFT,
    # reward-model SFT), the rollout's micro-batches in GRPO (group_size x prompts_per_step /
    # minibatch_size), 1 in GCPO and rm-scalar; GRPO, GCPO and rm-scalar refuse a value that differs
    grad_accum: int | None = None
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (e.g. recipes/deepspeed/zero2.json)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200  # 0: only at the end
    save_every: int = 200  # 0: only at the end
    keep_checkpoints: int = 2
    wandb: bool = False  # also log to Weights & Biases (WANDB_API_KEY from the environment)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (big models)

    def __post_init__(self):
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.steps <= 0 or self.batch_size <= 0 or (self.grad_accum is not None and self.grad_accum <= 0):
            raise ValueError("steps, batch_size and grad_accum must be positive")
        if self.log_every <= 0 or self.eval_every < 0 or self.save_every < 0 or self.keep_checkpoints <= 0:
            raise ValueError(f"need log_every >= 1, eval_every >= 0, save_every >= 0 and keep_checkpoints >= 1, got "
                             f"{self.log_every}, {self.eval_every}, {self.save_every}, {self.keep_checkpoints}")


def settle_grad_accum(run: RunSection, implied: int | None = None, by: str = "") -> int:
    """Fill `run.grad_accum` (null in the recipe) with the value the trainer's batching implies.

    `implied` None: the trainer takes any value (default 1). Otherwise the trainer's own batching
    fixes it (`by` says how), and a recipe value that differs is an error rather than being
    overwritten, since the recipe would not describe the run it made."""
    if implied is None:
        run.grad_accum = 1 if run.grad_accum is None else run.grad_accum
    elif run.grad_accum is None:
        run.grad_accum = implied
    elif run.grad_accum != implied:
        raise ConfigError(f"run.grad_accum: {run.grad_accum} contradicts {by}, which makes {implied} micro-batches "
                          f"per optimizer step; leave run.grad_accum out (or null) or set it to {implied}")
    return run.grad_accum


# What LoRA adapts by default: the attention and MLP projections of a Llama-style block (earl's backbones,
# Emu3's text model and most causal LMs name them so)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSection:
    """Low-rank adapters (LoRA, through peft) instead of full fine-tuning: the `lora:` section of a recipe.

    Absent (null), a stage trains every weight. Present, the backbone stays frozen and only rank-`r`
    adapters on the modules named by `target_modules` (and the modules in `modules_to_save`, trained in
    full) learn; checkpoints then hold the adapters alone, with a pointer to the base model
    (`earl.train.lora`), and `earl checkpoint merge` folds them back into a full editor."""

    r: int = 16  # the adapters' rank
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input
    # module-name suffixes to adapt ("q_proj" matches model.layers.3.self_attn.q_proj); each must match a module
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # modules trained in full beside the adapters, e.g. [embed_tokens, lm_head] where training grew the
    # vocabulary (the reward model's judge words, the decomposer's plan tokens): frozen, new rows stay as made
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.r < 1 or not self.alpha > 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"need r >= 1, alpha > 0 and 0 <= dropout < 1, got r={self.r}, alpha={self.alpha}, "
                             f"dropout={self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules is empty; name the modules to adapt (default: "
                             f"{', '.join(LORA_TARGETS)})")
