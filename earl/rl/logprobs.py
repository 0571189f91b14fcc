"""Log-probabilities of sampled completions under exactly the distribution the sampler drew from.

The sampler (`earl.generate.sample_edits`) draws image codes from
    softmax( (u + s * (c - u))[image slice] / temperature )
and reasoning tokens from softmax( c[text ids allowed in thinking] / temperature ), where c and u
are the conditional and unconditional logits. A policy gradient is only correct if the trainer
scores the same distribution, so this module recomputes it with gradients: one forward over the
conditional sequences and, with CFG, one over the unconditional ones (which never saw the
thinking text, as in sampling). Forced structure carries no log-prob and no loss. Top-k / top-p
make the sampled distribution depend on a filter and are refused by the RL config.

`sequence_logprobs` is the same for plain text (the reward model's traces, GCPO): each completion
token under the full vocabulary at the sampling temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from earl.generate import GenerationOutput, SamplingConfig, thinking_vocab_mask
from earl.layout import EditLayout


@dataclass
class Rollout:
    """Sampled completions as the trainer needs them: right-padded, thinking padding removed."""

    instructions: list[str]
    source_codes: torch.Tensor | list[torch.Tensor]  # (N, h, w), or one grid per row when shapes differ
    completions: torch.Tensor  # (N, T) ids, right-padded with pad
    lengths: torch.Tensor  # (N,) real completion lengths
    think_lengths: torch.Tensor  # (N,) tokens before the image header (<think> ... </think>), 0 without CoT
    sampled: torch.Tensor  # (N, T) True where the token was sampled (carries loss)
    is_image: torch.Tensor  # (N, T) True at sampled image codes
    old_logprobs: torch.Tensor  # (N, T) the sampler's log-probs
    codes: torch.Tensor | list[torch.Tensor]  # (N, h, w), or one grid per row


def rollout_from_generation(instructions: list[str], source_codes: torch.Tensor, out: GenerationOutput,
                            layout: EditLayout) -> Rollout:
    pad = layout.ids.pad
    rows, sampled, lps = [], [], []
    for ids, smp, lp in zip(out.completions, out.sampled_mask, out.logprobs):
        keep = ~((ids == pad) & ~smp)  # drop the masked padding of rows that finished thinking early
        rows.append(ids[keep]), sampled.append(smp[keep]), lps.append(lp[keep])
    N, T = len(rows), max(len(r) for r in rows)
    comp = torch.full((N, T), pad, dtype=torch.long)
    smp_t = torch.zeros((N, T), dtype=torch.bool)
    lp_t = torch.zeros((N, T))
    lengths = torch.tensor([len(r) for r in rows])
    think = torch.zeros(N, dtype=torch.long)
    for i, (r, s, lp) in enumerate(zip(rows, sampled, lps)):
        comp[i, : len(r)], smp_t[i, : len(r)], lp_t[i, : len(r)] = r, s, lp
        think[i] = r.tolist().index(layout.vocab.boi)
    is_image = layout.vocab.is_image(comp) & smp_t
    return Rollout(list(instructions), source_codes, comp, lengths, think, smp_t, is_image, lp_t, out.codes)


def _gather_logits(backbone, layout: EditLayout, seqs: list[list[int]], positions: list[list[int]]) -> torch.Tensor:
    """Logits predicting given positions of left-padded sequences: (N, T, V).

    `positions[i][j]` indexes sequence i (before padding); the logits that predict it sit one step earlier.
    """
    batch = layout.pad_prompts(seqs)
    device = next(backbone.parameters()).device
    logits = backbone(**{k: t.to(device) for k, t in batch.items()}).logits  # (N, L, V)
    L = logits.shape[1]
    T = max(len(p) for p in positions)
    idx = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, positions)):
        offset = L - len(s)  # left padding
        idx[i, : len(p)] = torch.tensor(p) + offset - 1
    rows = torch.arange(len(seqs))[:, None]
    return logits[rows.to(logits.device), idx.to(logits.device)]  # (N, T, V)


def policy_logprobs(backbone, layout: EditLayout, rollout: Rollout, sampling: SamplingConfig) -> torch.Tensor:
    """(N, T) log-probs of the rollout's tokens under the current weights (differentiable); 0 where not sampled."""
    if sampling.top_k or sampling.top_p < 1.0 or sampling.temperature <= 0:
        raise ValueError("RL log-probs need temperature > 0 and no top-k/top-p filtering")
    temp = sampling.temperature
    N, T = rollout.completions.shape
    s0, s1 = layout.vocab.image_ids
    sources = [s.cpu() for s in rollout.source_codes]  # rows of a tensor, or a list of differently shaped grids
    prompts = [layout.prompt(i, s) for i, s in zip(rollout.instructions, sources)]
    comps = [rollout.completions[i, : rollout.lengths[i]].tolist() for i in range(N)]
    cond_seqs = [p + c for p, c in zip(prompts, comps)]
    cond_pos = [list(range(len(p), len(p) + len(c))) for p, c in zip(prompts, comps)]
    cond = _gather_logits(backbone, layout, cond_seqs, cond_pos).float()  # (N, T', V)
    T_ = cond.shape[1]

    img_logits = cond[..., s0:s1]
    if sampling.uses_cfg:
        un_prompts = [layout.prompt(None, s) for s in sources]
        tl = rollout.think_lengths.tolist()
        un_seqs = [p + c[t:] for p, c, t in zip(un_prompts, comps, tl)]
        # completion position j (>= think length) sits at len(p) + j - t in the unconditional sequence
        un_pos = [[len(p) + j - t if j >= t else len(p) for j in range(len(c))] for p, c, t in zip(un_prompts, comps, tl)]
        un = _gather_logits(backbone, layout, un_seqs, un_pos).float()[..., s0:s1]
        img_logits = un + sampling.guidance_scale * (img_logits - un)
    comp = rollout.completions[:, :T_].to(cond.device)
    img_lp = torch.log_softmax(img_logits / temp, -1).gather(-1, (comp - s0).clamp(0, s1 - s0 - 1)[..., None])[..., 0]

    allowed = thinking_vocab_mask(layout, cond.shape[-1], cond.device)
    txt_lp = torch.log_softmax(cond.masked_fill(~allowed, float("-inf")) / temp, -1)
    txt_lp = txt_lp.gather(-1, comp.clamp(0, s0 - 1)[..., None])[..., 0]

    is_img = rollout.is_image[:, :T_].to(cond.device)
    is_txt = (rollout.sampled[:, :T_] & ~rollout.is_image[:, :T_]).to(cond.device)
    lp = torch.where(is_img, img_lp, torch.where(is_txt, txt_lp, torch.zeros_like(img_lp)))
    return torch.nn.functional.pad(lp, (0, T - T_))


def sequence_logprobs(model, seqs: list[list[int]], starts: list[int], pad: int, temperature: float) -> torch.Tensor:
    """(N, T) log-probs of each sequence's tokens from `starts[i]` on (right-padded with 0), full vocabulary.

    Rows are left-padded, so every completion ends at the last position: logits are computed for the
    last T + 1 positions only (`logits_to_keep`), not for the prompts, which are most of each row."""
    L = max(len(s) for s in seqs)
    T = max(len(s) - st for s, st in zip(seqs, starts))
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s)
        mask[i, L - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    keep = min(L, T + 1)  # logits at positions L - keep .. L - 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   logits_to_keep=keep).logits
    logp = torch.log_softmax(logits.float() / temperature, -1)
    out = torch.zeros((len(seqs), T), device=device)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        off = L - len(s) - (L - keep)  # row i's left padding, in the kept window's coordinates
        tgt = torch.tensor(s[st:], device=device)
        rows = torch.arange(off + st - 1, off + len(s) - 1, device=device)
        out[i, : len(tgt)] = logp[i, rows].gather(-1, tgt[:, None])[:, 0]
    return out
