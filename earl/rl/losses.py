"""GRPO math: group-relative advantages and the PPO-clipped policy loss, in pure functions.

Shapes: rewards (P, G) for P prompts with G samples each; per-token tensors (N, T) with
N = P * G rows (prompt-major) and T completion positions, `mask` True where a token carries loss.

Loss normalisations, chosen by name from `LOSS_AGGREGATIONS`; each name means what trl's
GRPOTrainer `loss_type` of that name means. "The batch" is everything one optimizer step covers:
every micro-batch of the accumulation and every rank (`BatchCounts`).
- "grpo":    mean over each sequence's tokens, then mean over the batch's sequences (DeepSeekMath
             GRPO). trl counts every row; here a row without loss tokens (a failed or filtered
             sample, not a zero) is left out of the count;
- "bnpo":    sum over a micro-batch's tokens / that micro-batch's token count, then the mean over
             the batch's micro-batches (trl's "bnpo": the local batch);
- "dr_grpo": sum over all tokens / (rows x T), T the completions' padded length: a constant
             normaliser, no length bias (Dr. GRPO; trl's T is max_completion_length);
- "dapo":    sum over all the batch's tokens / the batch's token count (token-level, DAPO; trl's
             default: the active tokens of the whole global batch across accumulation steps).
With one micro-batch on one rank "bnpo" and "dapo" agree; with several they do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchCounts:
    """What the batch of one optimizer step holds, summed over its micro-batches and ranks.

    The aggregations divide by these, so a micro-batch's loss is its share of the batch's loss and
    the shares add up to it; the trainer undoes the mean that accumulation and data parallelism
    take over micro-batches and ranks (`earl.train.grpo`)."""

    tokens: float  # loss tokens
    sequences: float  # rows with at least one loss token
    rows: float  # all rows
    micro_batches: float

    @classmethod
    def of(cls, mask: torch.Tensor, micro_batches: int = 1) -> BatchCounts:
        """The counts of `mask` (N, T), taken as the whole batch in `micro_batches` parts."""
        m = mask.float()
        return cls(float(m.sum()), float((m.sum(-1) > 0).sum()), float(mask.shape[0]), float(micro_batches))

    def as_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor([self.tokens, self.sequences, self.rows, self.micro_batches], dtype=torch.float64,
                            device=device)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> BatchCounts:
        return cls(*(float(v) for v in t.tolist()))


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None, scale_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: reward minus its group's mean, optionally over the group's std.

    `valid` (P, G) marks rewards that exist (a failed judgement is not a zero): group statistics
    use valid samples only, and invalid samples get advantage 0 (they are also masked from the loss).
    The std is the population std over valid samples; groups with one valid sample get 0.
    """
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(-1, keepdim=True).clamp(min=1)
    mean = r.sum(-1, keepdim=True) / n
    centred = torch.where(valid, rewards - mean, torch.zeros_like(rewards))
    if scale_std:
        std = (centred.pow(2).sum(-1, keepdim=True) / n).sqrt()
        centred = centred / (std + eps)
    return torch.where(valid & (n > 1), centred, torch.zeros_like(centred))


def zero_variance_groups(rewards: torch.Tensor, valid: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """(P,) True for groups whose valid rewards are all equal (they carry no learning signal)."""
    big = torch.finfo(rewards.dtype).max
    hi = torch.where(valid, rewards, torch.full_like(rewards, -big)).max(-1).values
    lo = torch.where(valid, rewards, torch.full_like(rewards, big)).min(-1).values
    return (hi - lo).abs() <= tol


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return (x * m).sum() / m.sum().clamp(min=1)


def _agg_grpo(x: torch.Tensor, mask: torch.Tensor, batch: BatchCounts) -> torch.Tensor:
    m = mask.float()
    per_seq = (x * m).sum(-1) / m.sum(-1).clamp(min=1)  # 0 for a row without loss tokens
    return per_seq.sum() / max(batch.sequences, 1.0)


def _agg_bnpo(x: torch.Tensor, mask: torch.Tensor, batch: BatchCounts) -> torch.Tensor:
    return _token_mean(x, mask) / max(batch.micro_batches, 1.0)


def _agg_dr_grpo(x: torch.Tensor, mask: torch.Tensor, batch: BatchCounts) -> torch.Tensor:
    return (x * mask.float()).sum() / (max(batch.rows, 1.0) * mask.shape[1])


def _agg_dapo(x: torch.Tensor, mask: torch.Tensor, batch: BatchCounts) -> torch.Tensor:
    return (x * mask.float()).sum() / max(batch.tokens, 1.0)


LOSS_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, BatchCounts], torch.Tensor]] = {
    "grpo": _agg_grpo,
    "bnpo": _agg_bnpo,
    "dr_grpo": _agg_dr_grpo,
    "dapo": _agg_dapo,
}


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    aggregation: str = "grpo",
    batch: BatchCounts | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clipped surrogate with an optional k3 KL penalty. Returns (loss, stats).

    logp, old_logp, ref_logp, mask: (N, T); advantages: (N,) one per sequence.
    Per token: max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)) + beta * k3.
    `batch`: the counts of the whole batch these rows are a micro-batch of; the loss is then this
    micro-batch's share of the batch's loss. None: these rows are the whole batch.
    """
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")
    agg = LOSS_AGGREGATIONS[aggregation]
    adv = advantages[:, None]  # (N, 1)
    ratio = torch.exp(logp - old_logp)  # (N, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    stats: dict[str, float] = {}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(_token_mean(kl.detach(), mask))
    loss = agg(per_token, mask, batch if batch is not None else BatchCounts.of(mask))
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        stats["clip_fraction"] = float(((clipped > unclipped).float() * m).sum() / n)
        stats["ratio_mean"] = float((ratio * m).sum() / n)
    return loss, stats
