"""GCPO rewards and advantages for training a reward model on preference pairs (Edit-R1).

For a preference pair (preferred image w, rejected image l) the reward model writes N reasoning
traces for each image and each trace ends in a score τ. A trace is rewarded by how often its score
ranks the pair correctly against the other image's traces:

    r^w_j = (1/N) Σ_k 1[τ^w_j > τ^l_k]        r^l_j = (1/N) Σ_k 1[τ^l_j < τ^w_k]

(ties count 0). Advantages are mean-centred within each image's group of N traces, without dividing
by the standard deviation; the policy loss is then the usual per-token PPO-clipped surrogate
(`earl.rl.losses.policy_loss`) averaged over the 2N traces. A pair where every w-trace already
beats every l-trace gives r = 1 everywhere, so zero advantages: no gradient.

Traces whose score did not parse are failures: they are left out of every comparison (the 1/N
becomes 1/(number of valid traces of the other image)) and get no advantage, so they carry no
loss; a pair with no valid trace on one side gives no signal at all.
"""

from __future__ import annotations

import torch


def gcpo_rewards(tau_w: torch.Tensor, tau_l: torch.Tensor, valid_w: torch.Tensor | None = None,
                 valid_l: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trace rewards for pairs: tau_* (P, N) scores, valid_* (P, N) bool -> (r_w, r_l), each (P, N).

    Invalid traces get reward 0 (and are masked out of the advantages by `gcpo_advantages`).
    """
    if tau_w.shape != tau_l.shape or tau_w.dim() != 2:
        raise ValueError(f"expected two (pairs, traces) tensors of one shape, got {tuple(tau_w.shape)} and "
                         f"{tuple(tau_l.shape)}")
    valid_w = torch.ones_like(tau_w, dtype=torch.bool) if valid_w is None else valid_w
    valid_l = torch.ones_like(tau_l, dtype=torch.bool) if valid_l is None else valid_l
    both = valid_w[:, :, None] & valid_l[:, None, :]  # (P, N_w, N_l): comparisons that count
    wins = (tau_w[:, :, None] > tau_l[:, None, :]) & both  # w_j beats l_k
    n_l = valid_l.sum(-1, keepdim=True).clamp(min=1)  # per pair: valid traces on the other side
    n_w = valid_w.sum(-1, keepdim=True).clamp(min=1)
    r_w = wins.sum(2) / n_l
    r_l = wins.sum(1) / n_w  # l_k is ranked correctly by every w_j that beats it
    zero = torch.zeros((), dtype=r_w.dtype)
    return torch.where(valid_w, r_w, zero), torch.where(valid_l, r_l, zero)


def gcpo_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-centred within each group (row) over its valid traces, no std division; invalid -> 0."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    n = valid.sum(-1, keepdim=True)
    mean = torch.where(valid, rewards, 0.0).sum(-1, keepdim=True) / n.clamp(min=1)
    adv = torch.where(valid, rewards - mean, 0.0)
    return torch.where(n > 1, adv, 0.0)  # a lone valid trace has nothing to be relative to


def pair_advantages(tau_w, tau_l, valid_w=None, valid_l=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' advantages for (P, N) score tensors; a pair lacking valid traces on a side gets zeros."""
    valid_w = torch.ones_like(tau_w, dtype=torch.bool) if valid_w is None else valid_w
    valid_l = torch.ones_like(tau_l, dtype=torch.bool) if valid_l is None else valid_l
    r_w, r_l = gcpo_rewards(tau_w, tau_l, valid_w, valid_l)
    usable = (valid_w.any(-1) & valid_l.any(-1))[:, None]
    return (torch.where(usable, gcpo_advantages(r_w, valid_w), 0.0),
            torch.where(usable, gcpo_advantages(r_l, valid_l), 0.0))
