"""GRPO for the editor: `earl train grpo recipes/shapes/grpo.yaml`.

Its own loop rather than trl's GRPOTrainer: trl scores the whole vocabulary without CFG, which is
not the distribution image codes are drawn from. One step:

    rollout   P prompts x G samples from `earl.generate` (the policy's own sampler)
    reward    a verifier scores each decoded edit; failed judgements are masked, never zeroed
    advantage group-relative (`earl.rl.losses.group_advantages`), optional std scaling
    update    PPO-clipped surrogate on log-probs of exactly the sampled distribution
              (`earl.rl.logprobs.policy_logprobs`), optional k3 KL to a frozen reference (the start;
              under LoRA the base with the adapters off),
              `updates_per_rollout` passes over the batch in minibatches

A step whose advantages are all zero (every group uniform or failed) makes no update at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from earl.config import to_dict
from earl.data import EncodedEdits
from earl.errors import ConfigError
from earl.evaluate import concat_outputs, decode_grids, oracle_eval, stack_grids
from earl.generate import SCHEDULES as SAMPLER_SCHEDULES
from earl.generate import GenerationCost, SamplingConfig, sample_edits
from earl.hub import resolve_model
from earl.io import atomic_write_json, save_png
from earl.model import UnifiedEditor
from earl.rl.logprobs import Rollout, policy_logprobs, rollout_from_generation
from earl.rl.losses import LOSS_AGGREGATIONS, BatchCounts, group_advantages, policy_loss, zero_variance_groups
from earl.shards import ShardedEdits
from earl.train.accelerator import make_accelerator, prepare_backbone, world_size
from earl.train.cursor import load_sources
from earl.train.loop import run_loop
from earl.train.lora import adapt, reference_model
from earl.train.metrics import finish_run
from earl.train.optim import make_optimizer, make_scheduler, step_schedule
from earl.train.sections import LoraSection, OptimSection, RunSection, settle_grad_accum
from earl.verify.base import EditRequest, build_verifier
from earl.verify.oracle import OracleVerifier
from earl.viz import image_grid


@dataclass
class GRPOSection:
    group_size: int = 8  # G samples per prompt
    prompts_per_step: int = 8  # P prompts per process per step
    minibatch_size: int = 16  # rows per forward/backward in the update
    updates_per_rollout: int = 1  # optimizer steps on one rollout batch (importance ratios matter when > 1)
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO's clip-higher uses 0.28
    beta: float = 0.0  # k3 KL weight to the frozen start; 0 keeps no reference model
    scale_std: bool = True  # divide advantages by the group std (GRPO); false = Dr. GRPO
    loss: str = "grpo"  # one of earl.rl.losses.LOSS_AGGREGATIONS
    filter_zero_variance: bool = False  # drop groups whose rewards are all equal
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0))
    # the rollout sampler's decoding schedule (`earl.generate.sample_edits`): "jacobi" with a window
    # feeds and verifies `window` codes per forward; accepted codes follow the same distribution, so
    # the rollout (and its log-probs) is one the policy could have drawn sequentially, in fewer forwards
    schedule: str = "sequential"
    window: int | None = None
    sample_grid_every: int = 50  # write a PNG of sampled edits and rewards every N steps (0 = off)
    # log the ShapesEdit oracle's verdict on every rollout beside a learned verifier's reward (monitor/*):
    # a reward that rises while the oracle's does not is being hacked. Off where prompts carry no scenes.
    monitor_oracle: bool = True

    def __post_init__(self):
        if self.loss not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss must be one of {', '.join(LOSS_AGGREGATIONS)}, got {self.loss!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative to the group)")
        if self.schedule not in SAMPLER_SCHEDULES:
            raise ValueError(f"grpo.schedule must be one of {', '.join(SAMPLER_SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "jacobi":
            if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
                raise ValueError(f"grpo.schedule 'jacobi' needs grpo.window = an integer >= 1 (codes fed and "
                                 f"verified per forward), got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"grpo.window = {self.window!r} is for grpo.schedule 'jacobi'; schedule "
                             f"{self.schedule!r} decodes one code per forward (set grpo.window: null)")
        s = self.sampling
        if s.temperature <= 0 or s.top_k or s.top_p < 1.0:
            raise ValueError("sampling for RL needs temperature > 0, top_k = 0 and top_p = 1: with a filter the "
                             "sampled distribution is not the one the trainer can score")
        if (self.group_size * self.prompts_per_step) % self.minibatch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} must divide group_size x prompts_per_step "
                             f"= {self.group_size * self.prompts_per_step}")


@dataclass
class VerifierSection:
    name: str = "oracle"  # a name in earl.verify.VERIFIERS
    options: dict = field(default_factory=dict)


@dataclass
class GRPOData:
    train: list[str] = field(default_factory=lambda: ["shapes:simple:train:20000:0"])
    eval: str | None = "shapes:simple:test:200"
    cache_dir: str = "runs/cache"
    image_size: int = 64
    oracle_eval_samples: int = 64


@dataclass
class GRPORecipe:
    out_dir: str
    init_from: str  # the SFT editor to start from
    data: GRPOData = field(default_factory=GRPOData)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    verifier: VerifierSection = field(default_factory=VerifierSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-5, min_lr=1e-5, warmup_steps=0,
                                                                       weight_decay=0.0))
    run: RunSection = field(default_factory=lambda: RunSection(steps=100, eval_every=50, save_every=50))
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    # LoRA adapters on the frozen start (earl.train.lora); null trains every weight. With beta > 0 the
    # reference is then the start itself, the adapters switched off: no second copy of the model
    lora: LoraSection | None = None

    def __post_init__(self):
        settle_micro_batching(self)


def settle_micro_batching(cfg: GRPORecipe) -> int:
    """run.grad_accum from the rollout's micro-batches (one optimizer step per pass over the rollout);
    a recipe value that contradicts them is an error naming both."""
    g = cfg.grpo
    return settle_grad_accum(cfg.run, g.group_size * g.prompts_per_step // g.minibatch_size,
                             f"grpo.group_size x grpo.prompts_per_step / grpo.minibatch_size "
                             f"({g.group_size} x {g.prompts_per_step} / {g.minibatch_size})")


# ---- rollout and reward ---------------------------------------------------------------------
def collect_rollout(editor, data: EncodedEdits, prompt_idx: list[int], grpo: GRPOSection, generator,
                    cost: GenerationCost | None = None) -> Rollout:
    """G samples per prompt from the policy's sampler (on `grpo.schedule`), in batches whose source grids
    share one shape. `cost`, when given, counts the forwards the batches ran."""
    G = grpo.group_size
    rows = [i for i in prompt_idx for _ in range(G)]  # prompt-major: row r belongs to prompt r // G
    instructions = [data.instructions[i] for i in rows]
    sources = [data.source_codes[i] for i in rows]
    chunk = max(grpo.minibatch_size, G)
    outs, start = [], 0
    while start < len(rows):  # a batch never mixes grid shapes (Emu3 grids follow each image's aspect)
        end = start + 1
        while end < len(rows) and end - start < chunk and sources[end].shape == sources[start].shape:
            end += 1
        outs.append(sample_edits(editor.backbone, editor.layout, instructions[start:end],
                                 torch.stack(sources[start:end]), grpo.sampling, think=editor.config.cot,
                                 generator=generator, schedule=grpo.schedule, window=grpo.window))
        if cost is not None:
            cost.add(outs[-1])
        start = end
    return rollout_from_generation(instructions, stack_grids(sources), concat_outputs(outs), editor.layout)


def rollout_requests(editor, data: EncodedEdits, prompt_idx: list[int], rollout: Rollout, G: int):
    """The rollout as verifier requests (prompt-major), with the decoded edits and sources."""
    rows = [i for i in prompt_idx for _ in range(G)]
    edited = decode_grids(editor, rollout.codes)
    sources = decode_grids(editor, [data.source_codes[i] for i in prompt_idx])
    reqs = [EditRequest(source=sources[r // G], instruction=data.instructions[i], edited=edited[r],
                        meta={"id": data.ids[i], "source_scene": data.source_scenes[i],
                              "target_scene": data.target_scenes[i]})
            for r, i in enumerate(rows)]
    return reqs, edited, sources


def rewards_of(results, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (P, G) and the valid mask (P, G) of verifier results; a failed result is masked, never zeroed."""
    valid = torch.tensor([not r.failed and r.reward is not None and math.isfinite(r.reward) for r in results])
    rewards = torch.tensor([r.reward if v else 0.0 for r, v in zip(results, valid.tolist())], dtype=torch.float32)
    return rearrange(rewards, "(p g) -> p g", g=G), rearrange(valid, "(p g) -> p g", g=G)


def score_rollout(editor, verifier, data: EncodedEdits, prompt_idx: list[int], rollout: Rollout, G: int):
    """Rewards (P, G), valid mask (P, G), per-sample results, edited images, sources and the requests."""
    reqs, edited, sources = rollout_requests(editor, data, prompt_idx, rollout, G)
    results = verifier.score(reqs)
    rewards, valid = rewards_of(results, G)
    return rewards, valid, results, edited, sources, reqs


def oracle_monitor(reqs, rewards: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """How a learned verifier's rewards on one rollout compare with the exact oracle's verdicts on it.

    monitor/oracle_overall and monitor/oracle_success: the oracle's mean verdict on the rollout (what the
    policy really achieved, whatever rewarded it); monitor/reward_oracle_corr: Pearson correlation of the
    two over valid samples; monitor/pair_agreement: of the pairs inside a group that the oracle tells
    apart, the share the verifier orders the same way (a tie counts as wrong) - the reward benchmark's
    pairwise accuracy, measured on exactly the samples the policy is being trained on."""
    verdicts = OracleVerifier("overall").score(reqs)
    if any(v.failed for v in verdicts):
        return {}
    oracle = torch.tensor([v.scores["overall"] for v in verdicts]).view_as(rewards)
    success = torch.tensor([v.scores["success"] for v in verdicts])
    out = {"monitor/oracle_overall": float(oracle.mean()), "monitor/oracle_success": float(success.mean())}
    r, o = rewards[valid], oracle[valid]
    if len(r) > 2 and float(r.std()) > 0 and float(o.std()) > 0:
        out["monitor/reward_oracle_corr"] = float(torch.corrcoef(torch.stack([r, o]))[0, 1])
    agree = total = 0
    for g in range(rewards.shape[0]):
        idx = valid[g].nonzero()[:, 0].tolist()
        for a in idx:
            for b in idx:
                if oracle[g, a] > oracle[g, b]:
                    total += 1
                    agree += bool(rewards[g, a] > rewards[g, b])
    if total:
        out["monitor/pair_agreement"] = agree / total
        out["monitor/oracle_pairs"] = float(total)
    return out


def load_prompts(accelerator, sources: list[str], editor, tok_dir: Path, cache: Path, image_size: int) -> EncodedEdits:
    """GRPO prompts from ShapesEdit/dataset sources and from `tokenized:DIR` shards (whose grids may differ:
    then the code columns are lists of grids)."""
    parts = []
    for name in sources:
        if name.startswith("tokenized:"):
            sh = ShardedEdits(name.removeprefix("tokenized:"))
            items = [sh[i] for i in range(len(sh))]
            n = len(items)
            parts.append(EncodedEdits(ids=[x["id"] for x in items], categories=[""] * n,
                                      instructions=[x["instruction"] for x in items],
                                      reasoning=[x["reasoning"] for x in items], source_scenes=[""] * n,
                                      target_scenes=[""] * n, source_codes=[x["source_codes"] for x in items],
                                      target_codes=[x["target_codes"] for x in items]))
        else:
            parts += load_sources(accelerator, [name], editor.image_tokenizer, tok_dir, cache, image_size)
    return EncodedEdits.concat(parts)


# ---- the loop -------------------------------------------------------------------------------
def train_grpo(cfg: GRPORecipe, resume: bool = False, progress: bool = True, verifier=None) -> dict:
    """Run the recipe. `verifier` (any object with `.score(requests)`) overrides the recipe's by-name verifier."""
    from accelerate.utils import set_seed

    out = Path(cfg.out_dir)
    G, P = cfg.grpo.group_size, cfg.grpo.prompts_per_step
    settle_micro_batching(cfg)  # again: the sections may have changed since the recipe was built
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    set_seed(cfg.run.seed + accelerator.process_index)
    init = resolve_model(cfg.init_from, what="init_from")  # a directory, or a Hub id fetched into the cache
    if not init.is_dir():
        raise ConfigError(f"init_from: {cfg.init_from} not found (expected an SFT editor directory)")
    editor = UnifiedEditor.from_pretrained(init)
    if verifier is None:
        verifier = build_verifier(cfg.verifier.name, **cfg.verifier.options)
    monitored = cfg.grpo.monitor_oracle and getattr(verifier, "name", None) != "oracle"
    cache = Path(cfg.data.cache_dir)
    tok_dir = init / "image_tokenizer"
    data = load_prompts(accelerator, cfg.data.train, editor, tok_dir, cache, cfg.data.image_size)
    evalset = (load_sources(accelerator, [cfg.data.eval], editor.image_tokenizer, tok_dir, cache, cfg.data.image_size)[0]
               if cfg.data.eval else None)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_json(out / "recipe.json", to_dict(cfg))

    adapt(editor, cfg.lora, init, out, accelerator)
    ref = reference_model(editor.backbone, cfg.grpo.beta)
    model = editor.backbone
    prepare_backbone(model, cfg.run)
    optimizer = make_optimizer(model, cfg.optim)
    # the schedule counts optimizer steps: updates_per_rollout per step (one per pass over the rollout)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps * cfg.grpo.updates_per_rollout)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.print(f"GRPO: {len(data)} prompts, G={G}, P={P} per process, world size {world_size(accelerator)}")

    def step_fn(step: int) -> dict:
        # prompts and draws depend only on (seed, step, rank): a resumed run sees the same stream
        order = torch.Generator().manual_seed(cfg.run.seed * 7919 + (step - 1) * 104729 + accelerator.process_index)
        prompt_idx = torch.randperm(len(data), generator=order)[:P].tolist()
        editor.backbone = accelerator.unwrap_model(model)
        editor.backbone.eval()
        t0 = time.time()
        cost = GenerationCost(cfg.grpo.schedule, cfg.grpo.window)
        rollout = collect_rollout(editor, data, prompt_idx, cfg.grpo, order, cost)
        t1 = time.time()
        rewards, valid, results, edited, sources, reqs = score_rollout(editor, verifier, data, prompt_idx, rollout, G)
        t2 = time.time()
        monitor = {}
        if monitored and all(r.meta["source_scene"] and r.meta["target_scene"] for r in reqs):
            monitor = oracle_monitor(reqs, rewards, valid)
        if cfg.grpo.filter_zero_variance:
            valid = valid & ~zero_variance_groups(rewards, valid)[:, None]
        adv = group_advantages(rewards, valid, scale_std=cfg.grpo.scale_std).flatten()  # (P*G,)
        row_ok = valid.flatten()
        update_stats = {}
        any_signal = accelerator.reduce(torch.tensor(float((adv != 0).any()), device=accelerator.device), "sum")
        if float(any_signal) > 0:
            update_stats = _update(cfg, accelerator, model, optimizer, scheduler, editor, ref, rollout, adv, row_ok)
        t3 = time.time()
        n_img = int(rollout.is_image.sum())
        if accelerator.is_main_process and cfg.grpo.sample_grid_every and step % cfg.grpo.sample_grid_every == 0:
            _sample_grid(out / "samples" / f"step_{step:06d}.png", sources, edited, rewards, valid, G)
        return {
            "reward/mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
            "reward/std": float(rewards[valid].std()) if valid.sum() > 1 else 0.0,
            "reward/failed": float((~valid).sum()),
            "reward/zero_variance_groups": float(zero_variance_groups(rewards, valid).sum()),
            "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": t3 - t2,
            "rollout/image_tokens_per_s": n_img / max(t1 - t0, 1e-9),
            # what the schedule cost: forwards over the rollout's batches, completion tokens per row per forward
            "rollout/forward_passes": float(cost.forward_passes),
            "rollout/tokens_per_pass": float(cost.to_dict()["tokens_per_pass"] or 0.0),
            "policy/entropy_mc": float(-(rollout.old_logprobs[rollout.is_image]).mean()),
            "update/skipped": float(not update_stats),
            "train/lr": scheduler.get_last_lr()[0],
            **{f"update/{k}": v for k, v in update_stats.items()},
            **_subscores(results),
            **monitor,
        }

    def evaluate(step: int) -> dict:
        ev = {}
        if accelerator.is_main_process:
            editor.backbone = accelerator.unwrap_model(model)
            ev = {f"eval/{k}": v for k, v in oracle_eval(editor, evalset, cfg.data.oracle_eval_samples,
                                                         cfg.eval_sampling).items()}
        accelerator.wait_for_everyone()
        return ev

    def finish(metrics, step, t_start, log):
        return finish_run(accelerator, model, editor, out, metrics, step, t_start, log)

    return run_loop(cfg, accelerator, "grpo", step_fn, finish, resume=resume, progress=progress,
                    evaluate=evaluate if evalset is not None else None, postfix="reward/mean")


def _update(cfg: GRPORecipe, accelerator, model, optimizer, scheduler, editor, ref, rollout: Rollout,
            adv: torch.Tensor, row_ok: torch.Tensor) -> dict[str, float]:
    """`updates_per_rollout` optimizer steps, each over the whole rollout batch in micro-batches.

    Each micro-batch's loss is its share of the loss over the batch of every rank (`BatchCounts`),
    so the loss names mean what they mean in trl ("dapo" divides by the global batch's tokens).
    accelerate divides each backward by the accumulation steps and DDP averages over ranks; the
    share is scaled back by both, so the step's gradient is the gradient of the batch's loss."""
    g = cfg.grpo
    model.train()
    ref_lp = None
    if ref is not None:
        with torch.no_grad():
            ref_lp = torch.cat([policy_logprobs(ref, editor.layout, _rows(rollout, s, g.minibatch_size), g.sampling)
                                for s in range(0, len(adv), g.minibatch_size)])
    batch = _batch_counts(accelerator, rollout.sampled & row_ok[:, None], g.minibatch_size)
    scale = accelerator.gradient_accumulation_steps * world_size(accelerator)
    stats_sum: dict[str, float] = {}
    stats_n: dict[str, int] = {}
    loss_sum = 0.0
    for _ in range(g.updates_per_rollout):
        for s in range(0, len(adv), g.minibatch_size):
            part = _rows(rollout, s, g.minibatch_size)
            sl = slice(s, s + g.minibatch_size)
            with accelerator.accumulate(model):
                logp = policy_logprobs(model, editor.layout, part, g.sampling)
                mask = part.sampled & row_ok[sl, None]
                share, stats = policy_loss(logp, part.old_logprobs.to(logp.device), adv[sl].to(logp.device),
                                           mask.to(logp.device), g.clip_low, g.clip_high,
                                           None if ref_lp is None else ref_lp[sl].to(logp.device), g.beta, g.loss,
                                           batch)
                accelerator.backward(share * scale)
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    stats["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip) or 0)
                optimizer.step()
                step_schedule(accelerator, scheduler)
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(share.detach())
            for k, v in stats.items():  # each stat's mean over the micro-batches that report it
                stats_sum[k] = stats_sum.get(k, 0.0) + v
                stats_n[k] = stats_n.get(k, 0) + 1
    loss = accelerator.reduce(torch.tensor(loss_sum / g.updates_per_rollout, device=accelerator.device), "sum")
    return {"loss": float(loss), **{k: v / stats_n[k] for k, v in stats_sum.items()}}


def _batch_counts(accelerator, mask: torch.Tensor, minibatch_size: int) -> BatchCounts:
    """The counts of the batch one optimizer step covers: this rank's rollout, summed over the ranks."""
    local = BatchCounts.of(mask, micro_batches=-(-mask.shape[0] // minibatch_size))
    return BatchCounts.from_tensor(accelerator.reduce(local.as_tensor(accelerator.device), "sum").cpu())


def _rows(r: Rollout, start: int, n: int) -> Rollout:
    sl = slice(start, start + n)
    return Rollout(r.instructions[sl], r.source_codes[sl], r.completions[sl], r.lengths[sl], r.think_lengths[sl],
                   r.sampled[sl], r.is_image[sl], r.old_logprobs[sl], r.codes[sl])


def _subscores(results) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for r in results:
        if not r.failed:
            for k, v in (r.scores or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    sums.setdefault(k, []).append(float(v))
    return {f"reward/{k}": sum(v) / len(v) for k, v in sums.items()}


def _sample_grid(path: Path, sources, edited, rewards, valid, G: int, max_prompts: int = 4) -> None:
    from PIL import ImageDraw

    rows = []
    for p in range(min(max_prompts, len(sources))):
        row = [sources[p]]
        for g in range(G):
            im = edited[p * G + g].convert("RGB").resize((sources[p].width * 2, sources[p].height * 2))
            ImageDraw.Draw(im).text((1, 1), f"{rewards[p, g]:.2f}" if valid[p, g] else "fail", fill=(0, 0, 0))
            row.append(im.resize(sources[p].size))
        rows.append(row)
    save_png(image_grid(rows, col_labels=["source"] + [f"sample {g}" for g in range(G)], scale=2), path)
