"""Fused attention kernels in Triton: prefill (causal, GQA, left padding) and flash-decoding over a KV cache.

Both kernels compute softmax(q k^T * scale + mask) v with an online softmax (FlashAttention's
running max and sum), so the (Lq x Lk) score matrix never exists in memory. The mask they support
is the one earl's sequences need, described by one integer per row:

    key j is visible to query i  <=>  kv_start[b] <= j <= (Lk - Lq) + i

i.e. causal attention aligned to the end of the key sequence (queries are the last Lq positions,
as with a KV cache), with the first kv_start[b] keys of row b hidden (left padding). Query rows
with no visible key (padding) return zeros.

- `prefill_attention` (any Lq <= Lk): one program per (block of BLOCK_M queries, batch, head);
  GQA by indexing the KV head h // group.
- `decode_attention` (Lq = 1, one new token per row; the CFG rows are just more rows): one program
  per (batch, KV head, split of the cache). Each program handles all `group` query heads of its
  KV head at once, so every K/V element is read once per group, not once per query head; the
  cache is cut into splits that run in parallel (flash-decoding) and are merged afterwards with
  their softmax statistics (max, sum), which keeps a GPU busy at batch 1 with long caches.

Inputs are in transformers' layout: q (B, H, Lq, D), k and v (B, Hkv, Lk, D); the output is
(B, Lq, H, D), the layout transformers' attention functions return. fp32, fp16 and bf16; the dot
products accumulate in fp32 (fp32 inputs use IEEE fp32 products, not TF32). No backward pass:
`earl.kernels.hf` routes training to SDPA.

On a machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1), slowly,
which is how the tests check them against a float64 reference. Note triton#11584: under the
interpreter `tl.dot` on bf16 is wrong, so bf16 is checked on a GPU only.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _prefill_kernel(Q, K, V, Out, KV_START, sm_scale,
                    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_om, s_oh,
                    H, GROUP, LQ, LK,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :],
                mask=(offs_m[:, None] < LQ) & d_ok[None, :], other=0.0)
    kv_start = tl.load(KV_START + b)
    q_pos = LK - LQ + offs_m  # the key index each query sits at

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = (kv_start // BLOCK_N) * BLOCK_N
    hi = tl.minimum(LK, LK - LQ + (pid_m + 1) * BLOCK_M)  # causal: later keys are never visible to this block
    k_base = K + b * s_kb + kvh * s_kh
    v_base = V + b * s_vb + kvh * s_vh
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = tl.load(k_base + cols[None, :] * s_kn + offs_d[:, None], mask=(cols[None, :] < LK) & d_ok[:, None],
                    other=0.0)
        s = tl.dot(q, k, input_precision=PRECISION) * sm_scale
        visible = (cols[None, :] >= kv_start) & (cols[None, :] <= q_pos[:, None]) & (cols[None, :] < LK)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at 0
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * s_vn + offs_d[None, :], mask=(cols[:, None] < LK) & d_ok[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(Out + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m[:, None] < LQ) & d_ok[None, :])


@triton.jit
def _decode_kernel(Q, K, V, ACC, M, L, KV_START, sm_scale,
                   s_qb, s_qh, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                   HKV, GROUP, LK, SPLIT_LEN,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    n_splits = tl.num_programs(2)
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    g_ok = offs_g < GROUP
    heads = kvh * GROUP + offs_g  # the query heads that share this KV head
    q = tl.load(Q + b * s_qb + heads[:, None] * s_qh + offs_d[None, :], mask=g_ok[:, None] & d_ok[None, :],
                other=0.0)
    kv_start = tl.load(KV_START + b)
    lo = tl.maximum(split * SPLIT_LEN, kv_start)
    hi = tl.minimum((split + 1) * SPLIT_LEN, LK)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    k_base = K + b * s_kb + kvh * s_kh
    v_base = V + b * s_vb + kvh * s_vh
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        ok = cols < hi
        k = tl.load(k_base + cols[None, :] * s_kn + offs_d[:, None], mask=ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, k, input_precision=PRECISION) * sm_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * s_vn + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # partial results, unnormalised, laid out (B, H, n_splits[, D]) in fp32
    row = (b * HKV * GROUP + heads) * n_splits + split
    tl.store(ACC + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_ok[:, None] & d_ok[None, :])
    tl.store(M + row, m_i, mask=g_ok)
    tl.store(L + row, l_i, mask=g_ok)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # the latter only matters for fp32 inputs


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, H, Lq, D) and k, v (B, Hkv, Lk, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if H % Hkv or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"query heads {H} must be a multiple of KV heads {Hkv}, with equal batch and head dim")
    if Lq > Lk:
        raise ValueError(f"more queries ({Lq}) than keys ({Lk}): queries are the last Lq key positions")
    return B, H, Lq, D, Hkv, Lk


def _kv_start(kv_start: torch.Tensor | None, B: int, device) -> torch.Tensor:
    if kv_start is None:
        return torch.zeros(B, dtype=torch.int32, device=device)
    return kv_start.to(device=device, dtype=torch.int32).contiguous()


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_start: torch.Tensor | None = None,
                      scale: float | None = None, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """Causal attention of the last Lq positions over Lk keys, GQA, keys before kv_start[b] hidden.

    Returns (B, Lq, H, D) in q's dtype.
    """
    B, H, Lq, D, Hkv, Lk = _check(q, k, v)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(B, Lq, H, D, dtype=q.dtype, device=q.device)
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    grid = (triton.cdiv(Lq, block_m), B * H)
    _prefill_kernel[grid](q, k, v, out, _kv_start(kv_start, B, q.device), scale,
                          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                          v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                          H, H // Hkv, Lq, Lk,
                          HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=block_m, BLOCK_N=block_n,
                          PRECISION=_precision(q.dtype))
    return out


def default_num_splits(batch: int, kv_heads: int, kv_len: int, device: torch.device, min_split: int = 256) -> int:
    """Enough splits to give every SM about two programs, none shorter than `min_split` keys."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4
    want = triton.cdiv(2 * sms, max(1, batch * kv_heads))
    return max(1, min(want, triton.cdiv(kv_len, min_split)))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_start: torch.Tensor | None = None,
                     scale: float | None = None, num_splits: int | None = None, block_n: int = 64) -> torch.Tensor:
    """One query per row (q: (B, H, 1, D)) over a KV cache (B, Hkv, Lk, D), split along the cache.

    Returns (B, 1, H, D) in q's dtype.
    """
    B, H, Lq, D, Hkv, Lk = _check(q, k, v)
    if Lq != 1:
        raise ValueError(f"decode_attention takes one query per row, got {Lq}")
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    q = q.contiguous()
    group = H // Hkv
    splits = num_splits or default_num_splits(B, Hkv, Lk, q.device)
    split_len = triton.cdiv(triton.cdiv(Lk, splits), block_n) * block_n
    splits = triton.cdiv(Lk, split_len)
    acc = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
    m = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    s = torch.empty_like(m)
    _decode_kernel[(B, Hkv, splits)](q, k, v, acc, m, s, _kv_start(kv_start, B, q.device),
                                     scale if scale is not None else 1.0 / math.sqrt(D),
                                     q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                                     v.stride(0), v.stride(1), v.stride(2),
                                     Hkv, group, Lk, split_len,
                                     HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                                     BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
                                     PRECISION=_precision(q.dtype))
    # merge the splits with their softmax statistics; splits that saw no visible key have m = -inf
    m_max = m.amax(-1, keepdim=True)
    w = torch.exp(m - torch.where(torch.isinf(m_max), torch.zeros_like(m_max), m_max))
    num = (acc * w[..., None]).sum(-2)
    den = (s * w).sum(-1, keepdim=True)
    out = num / torch.where(den == 0, torch.ones_like(den), den)
    return out.to(q.dtype).unsqueeze(1)  # (B, 1, H, D)
