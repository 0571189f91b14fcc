"""GCPO for the reasoning reward model: `earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml`.

One step (Edit-R1's Group Contrastive Policy Optimisation):

    sample      N verdict traces for each image of P preference pairs (temperature sampling of text)
    parse       each trace's final score τ; an unparseable trace is invalid (no reward, no loss).
                `gcpo.score: expected` (not in the paper) reads τ as the expectation of the integer
                after the trace's `<score>` instead of the one it wrote: fewer ties between traces,
                and the same readout as `earl eval rewardbench --expected-score`; `gcpo.score:
                points` as 10 x the mean P(yes) at its verdict words (`--expected-points`)
    reward      r^w_j = share of the other image's traces it ranks correctly (`earl.rl.gcpo`)
    advantage   mean-centred within each image's N traces, no std division
    update      per-token PPO-clipped surrogate over the trace tokens, averaged over tokens and
                traces (`earl.rl.losses.policy_loss`, aggregation "grpo"); optional k3 KL (β, default 0)

`gcpo_step` is generic in the prompt and the parser, so the same code trains any text scorer; the
trainer supplies judge prompts and `parse_trace`. Log-probs are those of the sampled distribution:
the full text vocabulary at the sampling temperature, no top-k/top-p.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from earl.config import to_dict
from earl.errors import ConfigError
from earl.generate import sample_traces_watching
from earl.hub import resolve_model
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.rl.gcpo import pair_advantages
from earl.rl.logprobs import sequence_logprobs
from earl.rl.losses import policy_loss
from earl.rrm.pairs import PairData, held_out_pairs, pairwise_accuracy
from earl.rrm.prompt import judge_prompt
from earl.rrm.readouts import TRACE_SCORES, trace_score, watched_words
from earl.rrm.scoring import rrm_scorer
from earl.train.accelerator import make_accelerator
from earl.train.loop import run_loop
from earl.train.lora import adapt, reference_model
from earl.train.metrics import finish_run
from earl.train.optim import make_optimizer, make_scheduler, step_schedule
from earl.train.sections import LoraSection, OptimSection, RunSection, settle_grad_accum


@dataclass
class GCPOSection:
    traces: int = 4  # N traces per image
    pairs_per_step: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 320
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0  # k3 KL to the frozen start; Edit-R1 uses none
    # traces per forward (and backward) in the update; the loss and its gradient are the same for any
    # value, memory and time are not: 128 traces of ~600 tokens in one forward took 10x the time of 32
    micro_batch: int = 32
    # τ of a trace: "written" (Edit-R1: the score it wrote); earl's extensions, read from the sampler's
    # logits: "expected" (the expectation of the integer after its `<score>`; fewer ties) or "points"
    # (10 x the mean P(yes) at its verdict words; the benchmark's E[points]). `earl.rrm.readouts.trace_score`
    score: str = "written"

    def __post_init__(self):
        if self.traces < 2 or self.temperature <= 0:
            raise ValueError("GCPO needs traces >= 2 and temperature > 0")
        if self.micro_batch < 1:
            raise ValueError(f"gcpo.micro_batch: {self.micro_batch} (expected traces per forward, >= 1)")

        if self.score not in TRACE_SCORES:
            raise ValueError(f"gcpo.score: {self.score!r} is not one of {', '.join(TRACE_SCORES)}")


@dataclass
class GCPORecipe:
    out_dir: str
    init_from: str  # a reward model from `earl train rrm-sft`
    data: PairData = field(default_factory=PairData)
    gcpo: GCPOSection = field(default_factory=GCPOSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-5, min_lr=1e-5, warmup_steps=0,
                                                                       weight_decay=0.0))
    run: RunSection = field(default_factory=lambda: RunSection(steps=200, eval_every=50, save_every=50))
    lora: LoraSection | None = None  # LoRA adapters on the frozen start (earl.train.lora); null: every weight

    def __post_init__(self):
        # gcpo_step accumulates a step's micro-batches itself; accelerate's accumulation would divide
        # every backward again and (under DeepSpeed) step the optimizer only every grad_accum steps
        settle_grad_accum(self.run, 1, "GCPO's own accumulation of a step's traces (gcpo.micro_batch)")


def gcpo_step(model, ref, prompts_w: list[list[int]], prompts_l: list[list[int]],
              parse: Callable[..., float | None], g: GCPOSection, eos: int, pad: int,
              generator: torch.Generator | None = None, sampler=None,
              watch: list[int] | None = None, backward: Callable | None = None) -> tuple[torch.Tensor | None, dict]:
    """Sample, score, and build the GCPO loss for P pairs; returns (loss or None without signal, stats).

    `parse(completion_ids, pair_index) -> score or None`; with `watch` (token ids),
    `parse(completion_ids, pair_index, watched_logits)`, the logits of those tokens at each sampled
    step (`sample_traces_watching`). `model` computes the differentiable log-probs (the
    accelerate-wrapped module in training); `sampler` (default `model`) samples.

    The update runs `g.micro_batch` traces at a time. With `backward(loss, last)` each micro-batch's
    share of the loss is back-propagated at once and freed (`last` marks the final share, where a
    data-parallel backward synchronises), and the loss comes back detached; without it the shares
    are summed into one differentiable loss for the caller. Either way the loss is the one over all
    traces: a trace's term is its token mean, and the loss the mean over traces with any loss token,
    so each share is its traces' terms over the total count.
    """
    P, N = len(prompts_w), g.traces
    sampler = sampler if sampler is not None else model
    sampler.eval()
    comps, watched = sample_traces_watching(sampler, prompts_w + prompts_l, N, g.temperature, g.max_new_tokens,
                                            eos, pad, generator, watch)
    tau = torch.zeros(2 * P * N)
    valid = torch.zeros(2 * P * N, dtype=torch.bool)
    for r, c in enumerate(comps):
        s = parse(c, (r // N) % P) if watched is None else parse(c, (r // N) % P, watched[r])
        if s is not None:
            tau[r], valid[r] = s, True
    tau, valid = (rearrange(x, "(side p n) -> side p n", side=2, p=P) for x in (tau, valid))  # preferred, rejected
    a_w, a_l = pair_advantages(tau[0], tau[1], valid[0], valid[1])
    adv = torch.cat([a_w.flatten(), a_l.flatten()])
    both = valid[0][:, :, None] & valid[1][:, None, :]
    correct = ((tau[0][:, :, None] > tau[1][:, None, :]) & both).sum() / both.sum().clamp(min=1)
    stats = {"gcpo/valid": float(valid.float().mean()), "gcpo/pair_correct": float(correct),
             "gcpo/nonzero_adv": float((adv != 0).float().mean())}
    if not bool((adv != 0).any()):
        return None, stats
    prompts = [p for p in prompts_w + prompts_l for _ in range(N)]
    seqs = [p + c for p, c in zip(prompts, comps)]
    starts = [len(p) for p in prompts]
    rows_ok = torch.cat([valid[0].flatten(), valid[1].flatten()])  # unparseable traces: no loss
    loss_tokens = torch.tensor([len(c) for c in comps]) * rows_ok  # (2PN,) tokens each trace carries loss on
    counted = loss_tokens > 0  # the traces the "grpo" mean is over
    n_counted = int(counted.sum())
    total, parts, tokens = None, {}, 0
    chunks = [slice(lo, lo + g.micro_batch) for lo in range(0, len(seqs), g.micro_batch)]
    chunks = [sl for sl in chunks if bool(counted[sl].any())]
    for j, sl in enumerate(chunks):
        model.eval()
        with torch.no_grad():
            old = sequence_logprobs(model, seqs[sl], starts[sl], pad, g.temperature)
            ref_lp = sequence_logprobs(ref, seqs[sl], starts[sl], pad, g.temperature) if ref is not None else None
        model.train()
        logp = sequence_logprobs(model, seqs[sl], starts[sl], pad, g.temperature)
        mask = torch.arange(logp.shape[1], device=logp.device)[None] < loss_tokens[sl, None].to(logp.device)
        loss, lstats = policy_loss(logp, old, adv[sl].to(logp.device), mask, g.clip_low, g.clip_high, ref_lp,
                                   g.beta, "grpo")
        # this chunk's traces' terms over the total count
        share = loss * (int(counted[sl].sum()) / n_counted)
        n_tok = int(mask.sum())
        for k, v in lstats.items():  # token-weighted means, as over the whole batch
            parts[k] = parts.get(k, 0.0) + v * n_tok
        tokens += n_tok
        if backward is not None:
            backward(share, j == len(chunks) - 1)
            share = share.detach()
        total = share if total is None else total + share
    stats.update({f"update/{k}": v / max(tokens, 1) for k, v in parts.items()})
    return total, stats


def train_rrm_gcpo(cfg: GCPORecipe, resume: bool = False, progress: bool = True) -> dict:
    from accelerate.utils import set_seed

    out = Path(cfg.out_dir)
    init = resolve_model(cfg.init_from, what="init_from")  # a directory, or a Hub id fetched into the cache
    if not init.is_dir():
        raise ConfigError(f"init_from: {cfg.init_from} not found (expected a model from `earl train rrm-sft`)")
    rows = 2 * cfg.gcpo.pairs_per_step * cfg.gcpo.traces
    if cfg.run.deepspeed and cfg.gcpo.micro_batch < rows:
        # DeepSpeed's engine reduces gradients at every backward of a step it counts as a boundary
        raise ConfigError(f"gcpo.micro_batch: {cfg.gcpo.micro_batch} splits a step's {rows} traces, which a "
                          f"DeepSpeed run cannot accumulate; set it to {rows} or more with run.deepspeed")
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    set_seed(cfg.run.seed)
    editor = UnifiedEditor.from_pretrained(init)
    layout, tok = editor.layout, editor.text_tokenizer
    size = editor.config.image_size
    pairs = held_out_pairs(editor.image_tokenizer, cfg.data.samples, cfg.data.seed, size, cfg.data.pairs_per_sample,
                           cfg.data.annotator_temperature)
    evals = held_out_pairs(editor.image_tokenizer, cfg.data.eval_samples, cfg.data.seed + 7_777_777, size,
                           annotator_temperature=cfg.data.annotator_temperature)
    if not pairs:
        raise ConfigError("data: no preference pairs could be drawn; raise data.samples")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", to_dict(cfg))
    adapt(editor, cfg.lora, init, out, accelerator)
    ref = reference_model(editor.backbone, cfg.gcpo.beta)
    model = editor.backbone
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    watch = watched_words(layout, cfg.gcpo.score)
    readout = {"written": "written", "expected": "expected_score", "points": "expected_points"}[cfg.gcpo.score]

    def prompt(e):
        return judge_prompt(layout, e["instruction"], e["points"], e["source_codes"], e["codes"])

    def backward(loss, last: bool):
        """Gradients add up over the step's micro-batches; DDP all-reduces once, after the last."""
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            accelerator.backward(loss)

    def step_fn(step: int) -> dict:
        rng = random.Random(cfg.run.seed * 7919 + step - 1)  # pairs and draws are functions of the step:
        batch = rng.sample(pairs, min(cfg.gcpo.pairs_per_step, len(pairs)))  # a resumed run sees the same ones
        n_points = [len(p.preferred["points"]) for p in batch]

        def parse(ids, k, watched=None, n_points=n_points):
            return trace_score(layout, tok, ids, n_points[k], watched, cfg.gcpo.score)

        gen = torch.Generator(device=editor.device).manual_seed(cfg.run.seed * 104729 + step - 1)
        loss, stats = gcpo_step(model, ref, [prompt(p.preferred) for p in batch],
                                [prompt(p.rejected) for p in batch], parse, cfg.gcpo, layout.ids.eos,
                                layout.ids.pad, gen, sampler=accelerator.unwrap_model(model), watch=watch,
                                backward=backward)
        if loss is not None:  # already back-propagated, micro-batch by micro-batch
            if cfg.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            step_schedule(accelerator, scheduler)
            optimizer.zero_grad(set_to_none=True)
        return {**stats, "update/skipped": float(loss is None), "train/lr": scheduler.get_last_lr()[0]}

    def evaluate(step: int) -> dict:
        editor.backbone = accelerator.unwrap_model(model)
        res = pairwise_accuracy(evals, rrm_scorer(editor, cfg.gcpo.max_new_tokens, readout=readout))
        return {"eval/pairwise_accuracy": res["overall"]["accuracy"], "eval/failed": float(res["failed"])}

    def finish(metrics, step, t0, log):
        return finish_run(accelerator, model, editor, out, metrics, step, t0, log)

    return run_loop(cfg, accelerator, "rrm_gcpo", step_fn, finish, resume=resume, progress=progress,
                    evaluate=evaluate, postfix="eval/pairwise_accuracy")
