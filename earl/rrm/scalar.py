"""The holistic baseline: a scalar Bradley–Terry reward model (`earl train rm-scalar`).

What Edit-R1 compares its reasoning verifier against: one number per (source, instruction, edit),
no principles and no reasoning. It is earl's unified model reading

    <bos> "judge : {instruction}" [source image] [edited image]

with a linear head on the last position's final hidden state, trained on the same simulated
preference pairs as GCPO with the Bradley–Terry loss  -log sigmoid(s_preferred - s_rejected).
Saved as an editor directory plus `scalar_head.safetensors`; as a verifier (`scalar`) its reward is
sigmoid(s), in [0, 1] like every other reward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from earl.config import to_dict
from earl.errors import ConfigError
from earl.io import atomic_path, atomic_write_json
from earl.rrm.pairs import PairData
from earl.train.common import (
    MetricLog,
    OptimSection,
    RunSection,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    settle_grad_accum,
)

HEAD_FILE = "scalar_head.safetensors"


def scalar_prompt(layout, instruction: str, source_codes, edited_codes) -> list[int]:
    return [layout.ids.bos, *layout.encode_text(f"judge : {instruction}"), *layout.image_tokens(source_codes),
            *layout.image_tokens(edited_codes)]


class ScalarRewardModel(nn.Module):
    def __init__(self, editor):
        super().__init__()
        self.editor = editor
        self.head = nn.Linear(editor.backbone.config.hidden_size, 1)

    def forward(self, seqs: list[list[int]]) -> torch.Tensor:
        batch = {k: v.to(self.editor.device) for k, v in self.editor.layout.pad_prompts(seqs).items()}
        out = self.editor.backbone(**batch, output_hidden_states=True)
        return self.head(out.hidden_states[-1][:, -1].float())[:, 0]  # left padding: the last position is real

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.editor.save_pretrained(path)
        with atomic_path(path / HEAD_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> ScalarRewardModel:
        from earl.model import UnifiedEditor

        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise ConfigError(f"{path}: no {HEAD_FILE} (expected a model written by `earl train rm-scalar`)")
        m = cls(UnifiedEditor.from_pretrained(path))
        m.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return m.eval()


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


def scalar_scorer(model: ScalarRewardModel, batch_size: int = 32):
    @torch.no_grad()
    def score(examples: list[dict]) -> list[float]:
        layout = model.editor.layout
        seqs = [scalar_prompt(layout, e["instruction"], e["source_codes"], e["codes"]) for e in examples]
        if not seqs:
            return []
        return torch.cat([model(seqs[s : s + batch_size]) for s in range(0, len(seqs), batch_size)]).tolist()

    return score


def train_scalar_rm(cfg: ScalarRecipe, resume: bool = False, progress: bool = True) -> dict:
    """Bradley–Terry training on simulated preference pairs; returns the final metrics."""
    import time

    from tqdm.auto import tqdm

    from earl.model import UnifiedEditor
    from earl.rrm.pairs import pairwise_accuracy
    from earl.rrm.rewardbench import held_out_pairs
    from earl.text import build_word_tokenizer
    from tokenizer.vq import VQTokenizer

    if resume:
        raise ConfigError("rm-scalar does not resume (short runs): start it again")
    out = Path(cfg.out_dir)
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    torch.manual_seed(cfg.run.seed)
    start = None
    if cfg.init_from:
        if not Path(cfg.init_from).is_dir():
            raise ConfigError(f"init_from: {cfg.init_from} not found (expected an editor directory)")
        start = UnifiedEditor.from_pretrained(cfg.init_from)
        tok, cfg.image_size = start.image_tokenizer, start.config.image_size
    elif not Path(cfg.image_tokenizer).is_dir():
        raise ConfigError(f"image_tokenizer: {cfg.image_tokenizer} not found (expected a tokenizer directory, "
                          "e.g. checkpoints/shapes-editor/image_tokenizer)")
    else:
        tok = VQTokenizer.from_pretrained(cfg.image_tokenizer)
    pairs = held_out_pairs(tok, cfg.data.samples, cfg.data.seed, cfg.image_size, cfg.data.pairs_per_sample,
                           cfg.data.annotator_temperature)
    evals = held_out_pairs(tok, cfg.data.eval_samples, cfg.data.seed + 7_777_777, cfg.image_size,
                           annotator_temperature=cfg.data.annotator_temperature)
    words = [f"judge : {p.preferred['instruction']}" for p in pairs + evals]
    if start is not None:
        editor = start.with_words(words)
    else:
        editor = UnifiedEditor.build(cfg.size, tok, build_word_tokenizer(words), cfg.image_size, seed=cfg.run.seed)
    model = ScalarRewardModel(editor)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", to_dict(cfg))
    log = MetricLog(accelerator, out, "rm_scalar", to_dict(cfg))
    layout = editor.layout
    rng = random.Random(cfg.run.seed)
    t0, metrics = time.time(), {}
    for step in tqdm(range(1, cfg.run.steps + 1), desc="rm-scalar", disable=not progress):
        model.train()
        batch = rng.sample(pairs, min(cfg.run.batch_size, len(pairs)))
        seqs = [scalar_prompt(layout, e["instruction"], e["source_codes"], e["codes"])
                for p in batch for e in (p.preferred, p.rejected)]
        s = model(seqs).view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(s[:, 0] - s[:, 1]).mean()
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"train/loss": float(loss.detach()), "train/pair_accuracy": float((s[:, 0] > s[:, 1]).float().mean())}
        if step % cfg.run.log_every == 0:
            log.log(step, metrics)
        if step % cfg.run.eval_every == 0 or step == cfg.run.steps:
            model.eval()
            res = pairwise_accuracy(evals, scalar_scorer(model))
            metrics["eval/pairwise_accuracy"] = res["overall"]["accuracy"]
            log.log(step, {"eval/pairwise_accuracy": res["overall"]["accuracy"]})
    model.save(out / "model")
    final = {**metrics, "step": cfg.run.steps, "wall_time_s": round(time.time() - t0, 1)}
    atomic_write_json(out / "final_metrics.json", final)
    log.close()
    return final


class ScalarVerifier:
    """Rewards sigmoid(s) from a scalar reward model (the holistic baseline)."""

    name = "scalar"

    def __init__(self, model_path: str):
        self.model = ScalarRewardModel.load(model_path)

    @torch.no_grad()
    def score(self, requests):
        from earl.verify.base import RewardResult

        ed = self.model.editor
        src = ed.encode_images([ed.preprocess(r.source)[0] for r in requests])
        edt = ed.encode_images([ed.preprocess(r.edited)[0] for r in requests])
        s = self.model([scalar_prompt(ed.layout, r.instruction, a.cpu(), b.cpu())
                        for r, a, b in zip(requests, src, edt)])
        return [RewardResult(reward=float(torch.sigmoid(v)), scores={"logit": float(v)}) for v in s]
