"""The optimiser and its schedule from a recipe's `optim` section, stepped in optimizer steps."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from transformers.optimization import (
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from earl.train.sections import OptimSection


def make_optimizer(model: torch.nn.Module, opt: OptimSection) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas))


def make_scheduler(optimizer, opt: OptimSection, total_steps: int):
    """Linear warm-up over `opt.warmup_steps`, then `opt.schedule` to `opt.min_lr` at `total_steps`.

    Both counts are optimizer steps, whatever the accumulation or the number of processes: advance
    it with `step_schedule`, never with a bare `scheduler.step()` inside an accumulation window."""
    if opt.schedule == "linear":  # to 0 (OptimSection holds min_lr at 0 for it)
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=opt.warmup_steps,
                                               num_training_steps=total_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=opt.warmup_steps, num_training_steps=total_steps, min_lr=opt.min_lr
    )


def step_schedule(accelerator: Accelerator, scheduler) -> None:
    """Advance the schedule by one optimizer step, where the optimizer really stepped.

    Inside `accelerator.accumulate` the optimizer steps only at the end of the window (sync_gradients),
    and an fp16 step with overflowing gradients is skipped; the schedule moves with the optimizer, so
    it is in optimizer steps on any number of ranks (see `make_accelerator`)."""
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
        scheduler.step()
