"""earl's Triton attention as a transformers attention implementation named "earl_triton".

`register()` adds it to transformers' attention-function registry (with SDPA's mask builder), so
any Hugging Face causal LM runs on it after `model.set_attn_implementation("earl_triton")`;
`UnifiedEditor` does this by itself when it runs on a GPU with Triton installed.

Each call checks that the kernels apply and otherwise hands the call to transformers' SDPA
function unchanged, saying why once per reason (not once per layer and step):
- no GPU (and not under TRITON_INTERPRET=1);
- gradients needed (the kernels have no backward: training uses SDPA);
- dropout, a soft-cap, a sliding window, or a float/custom mask;
- a mask that is not "causal, aligned to the last keys, with left padding", which is what
  earl's layouts produce (checked exactly, by rebuilding that mask and comparing).
"""

from __future__ import annotations

import logging
import os

import torch

NAME = "earl_triton"
log = logging.getLogger(__name__)
_reported: set[str] = set()


def _fallback(reason: str, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if reason not in _reported:
        _reported.add(reason)
        log.warning("earl_triton attention: using SDPA (%s)", reason)
    return sdpa_attention_forward(*args, **kwargs)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def padding_starts(mask: torch.Tensor, lq: int, lk: int) -> torch.Tensor | None:
    """Per-row start of the visible keys if `mask` (B, 1, Lq, Lk, bool) is exactly causal + left padding.

    Query rows with no visible key (padding) may be anything: their output is never used.
    Returns None for any other pattern.
    """
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (lq, lk):
        return None
    last = mask[:, 0, -1, :]  # the last query sees every visible key
    start = (~last).int().cumprod(-1).sum(-1)  # length of the hidden prefix
    cols = torch.arange(lk, device=mask.device)
    q_pos = torch.arange(lk - lq, lk, device=mask.device)
    expected = (cols[None, None, :] >= start[:, None, None]) & (cols[None, None, :] <= q_pos[None, :, None])
    live = expected.any(-1)  # rows that should see at least one key
    if not torch.equal(mask[:, 0] & live[..., None], expected & live[..., None]):
        return None
    return start


def triton_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    args = (module, query, key, value, attention_mask)
    fwd = dict(dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    if not (query.is_cuda or _interpreted()):
        return _fallback("no GPU", *args, **fwd)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        return _fallback("gradients needed; the kernels have no backward", *args, **fwd)
    if dropout or kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        return _fallback("dropout, soft-cap or sliding window", *args, **fwd)
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32) or query.shape[-1] > 256:
        return _fallback(f"dtype {query.dtype} / head dim {query.shape[-1]}", *args, **fwd)
    lq, lk = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        return _fallback("non-causal attention", *args, **fwd)
    if attention_mask is None:
        if lq > 1 and lk != lq:  # SDPA would align this causal mask to the first keys (static-cache prefill)
            return _fallback("unmasked prefill into a longer cache", *args, **fwd)
        start = None
    else:
        start = padding_starts(attention_mask, lq, lk)
        if start is None:
            return _fallback("a mask other than causal + left padding", *args, **fwd)
    # here, not at the top: it imports triton, an optional GPU package
    from earl.kernels.attention import decode_attention, prefill_attention

    if lq == 1:
        out = decode_attention(query, key, value, start, scale=scaling)
    else:
        out = prefill_attention(query, key, value, start, scale=scaling)
    return out, None


def register() -> str:
    """Add "earl_triton" to transformers' attention and mask registries (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, triton_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton_attention(model, force: bool = False) -> bool:
    """Switch a transformers model to earl_triton when it can run (a GPU, or `force` for the interpreter).

    Returns whether it switched; on a CPU without `force` the model keeps its attention (SDPA).
    """
    if not triton_available() or not (force or torch.cuda.is_available()):
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
