"""`earl train rm-scalar`: the scalar Bradley–Terry reward model (`earl.rrm.scalar`) on preference pairs.

The same simulated pairs as GCPO (`earl.rrm.pairs.held_out_pairs`), the loss
-log sigmoid(s_preferred - s_rejected), one batch of pairs per optimizer step, run by the shared loop
(`earl.train.loop`): each step's pairs are drawn from a generator seeded by (run seed, step), so a
run killed and resumed trains on the same pairs as one never stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from earl.config import to_dict
from earl.errors import ConfigError
from earl.hub import resolve_model
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.rrm.pairs import PairData, held_out_pairs, pairwise_accuracy
from earl.rrm.scalar import ScalarRewardModel, scalar_prompt, scalar_scorer
from earl.text import build_word_tokenizer
from earl.train.accelerator import make_accelerator
from earl.train.loop import run_loop
from earl.train.metrics import write_final
from earl.train.optim import make_optimizer, make_scheduler, step_schedule
from earl.train.sections import OptimSection, RunSection, settle_grad_accum
from tokenizer.vq import VQTokenizer


@dataclass
class ScalarRecipe:
    out_dir: str
    size: str = "shapes-tiny"
    image_tokenizer: str = "checkpoints/shapes-editor/image_tokenizer"
    image_size: int = 64
    # An editor directory to start from (its backbone, image tokenizer and image size; the three
    # fields above are then ignored), its vocabulary grown by the judge words - as rrm-sft's init_from.
    init_from: str | None = None
    data: PairData = field(default_factory=lambda: PairData(eval_samples=100))
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=lambda: RunSection(steps=1000, batch_size=16))

    def __post_init__(self):
        settle_grad_accum(self.run, 1, "rm-scalar's one batch of pairs per optimizer step")


def _start_editor(cfg: ScalarRecipe):
    """(editor to grow the judge words into, or None; the image tokenizer); checks the paths."""
    if cfg.init_from:
        init = resolve_model(cfg.init_from, what="init_from")  # a directory or a Hub id
        if not init.is_dir():
            raise ConfigError(f"init_from: {cfg.init_from} not found (expected an editor directory)")
        start = UnifiedEditor.from_pretrained(init)
        cfg.image_size = start.config.image_size
        return start, start.image_tokenizer
    if not Path(cfg.image_tokenizer).is_dir():
        raise ConfigError(f"image_tokenizer: {cfg.image_tokenizer} not found (expected a tokenizer directory, "
                          "e.g. checkpoints/shapes-editor/image_tokenizer)")
    return None, VQTokenizer.from_pretrained(cfg.image_tokenizer)


def train_scalar_rm(cfg: ScalarRecipe, resume: bool = False, progress: bool = True) -> dict:
    """Bradley–Terry training on simulated preference pairs; returns the final metrics."""
    out = Path(cfg.out_dir)
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    torch.manual_seed(cfg.run.seed)
    start, tok = _start_editor(cfg)
    pairs = held_out_pairs(tok, cfg.data.samples, cfg.data.seed, cfg.image_size, cfg.data.pairs_per_sample,
                           cfg.data.annotator_temperature)
    evals = held_out_pairs(tok, cfg.data.eval_samples, cfg.data.seed + 7_777_777, cfg.image_size,
                           annotator_temperature=cfg.data.annotator_temperature)
    if not pairs:
        raise ConfigError("data: no preference pairs could be drawn; raise data.samples")
    words = [f"judge : {p.preferred['instruction']}" for p in pairs + evals]
    if start is not None:
        editor = start.with_words(words)
    else:
        editor = UnifiedEditor.build(cfg.size, tok, build_word_tokenizer(words), cfg.image_size, seed=cfg.run.seed)
    reward_model = ScalarRewardModel(editor)
    optimizer = make_optimizer(reward_model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps)
    model, optimizer, scheduler = accelerator.prepare(reward_model, optimizer, scheduler)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_json(out / "recipe.json", to_dict(cfg))
    layout = editor.layout

    def step_fn(step: int) -> dict:
        model.train()
        batch = random.Random(cfg.run.seed * 7919 + step - 1).sample(pairs, min(cfg.run.batch_size, len(pairs)))
        seqs = [scalar_prompt(layout, e["instruction"], e["source_codes"], e["codes"])
                for p in batch for e in (p.preferred, p.rejected)]
        s = model(seqs).view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(s[:, 0] - s[:, 1]).mean()
        accelerator.backward(loss)
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        step_schedule(accelerator, scheduler)
        optimizer.zero_grad(set_to_none=True)
        if step % cfg.run.log_every and step != cfg.run.steps:
            return {}
        return {"train/loss": float(loss.detach()), "train/pair_accuracy": float((s[:, 0] > s[:, 1]).float().mean()),
                "train/lr": scheduler.get_last_lr()[0]}

    def evaluate(step: int) -> dict:
        unwrapped = accelerator.unwrap_model(model).eval()
        return {"eval/pairwise_accuracy": pairwise_accuracy(evals, scalar_scorer(unwrapped))["overall"]["accuracy"]}

    def finish(metrics, step, t0, log):
        return write_final(accelerator, out, metrics, step, t0, log, accelerator.unwrap_model(model).save)

    return run_loop(cfg, accelerator, "rm_scalar", step_fn, finish, resume=resume, progress=progress,
                    evaluate=evaluate, postfix="train/loss")
