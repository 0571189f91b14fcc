"""Teacher-forced language-model training (the editor's SFT, the reward model's SFT) on the shared loop.

`train_lm` resumed after a `kill -9` trains on the same batches, with the same random draws, as a
run never stopped: the data position is part of the checkpoint (`earl.train.cursor`).
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from earl.train.accelerator import prepare_backbone
from earl.train.cursor import CursorState, DataCursor
from earl.train.loop import run_loop
from earl.train.metrics import finish_run
from earl.train.optim import make_optimizer, make_scheduler, step_schedule


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions; with `loss_weights` in the batch, each
    position's term is weighted and the sum divided by the labelled positions' total weight."""
    if "loss_weights" not in batch:
        return model(**batch).loss
    batch = dict(batch)
    weights, labels = batch.pop("loss_weights")[:, 1:], batch.pop("labels")[:, 1:]
    logits = model(**batch).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="none").view_as(labels)
    weights = weights * (labels != -100)
    return (ce * weights).sum() / weights.sum().clamp_min(1e-8)


def train_lm(cfg, accelerator: Accelerator, editor, loader, name: str, resume: bool, progress: bool,
             evaluate=None) -> dict:
    """Teacher-forced training (SFT and the reward model's SFT) as a step function of `run_loop`.

    `cfg` has `out_dir`, `optim` (OptimSection) and `run` (RunSection); `loader` yields collated
    batches with labels; `evaluate(model, step) -> metrics` runs every `run.eval_every` steps.
    The data position (epoch, batch) is part of the checkpoint, so a resumed run trains on the
    batches the interrupted one would have reached.
    """
    model = editor.backbone
    prepare_backbone(model, cfg.run)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    batches = DataCursor(accelerator, loader, cfg.run.seed)
    t0, tokens = time.time(), 0

    def step_fn(step: int) -> dict:
        nonlocal tokens
        model.train()
        for _ in range(cfg.run.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = lm_loss(model, batch)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                step_schedule(accelerator, scheduler)
                optimizer.zero_grad(set_to_none=True)
            tokens += int((batch["labels"] != -100).sum())
        if step % cfg.run.log_every and step != cfg.run.steps:
            return {}
        metrics = {"train/loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
                   "train/lr": scheduler.get_last_lr()[0],
                   "train/target_tokens_per_s": tokens / max(time.time() - t0, 1e-9)}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        return metrics

    def finish(metrics, step, t_start, log):
        return finish_run(accelerator, model, editor, cfg.out_dir, metrics, step, t_start, log)

    def run_eval(step: int) -> dict:
        metrics = evaluate(model, step)
        model.train()
        return metrics

    return run_loop(cfg, accelerator, name, step_fn, finish, resume=resume, progress=progress,
                    evaluate=run_eval if evaluate is not None else None,
                    state=CursorState(batches, cfg.run.grad_accum, len(loader)), postfix="train/loss")
