"""One fused Triton kernel for a sampling step over image codes: CFG combine, the image-code slice,
temperature, top-k, the draw and its log-probability.

Without it a decode step ends in about ten small PyTorch kernels on (rows x codebook) logits
(slice, two casts, the CFG combine, divide, topk, masked_fill, log_softmax, exp, multinomial,
gather), each a launch and a round trip through memory; for small models, and at batch 1 for
large ones, those launches are a visible share of the step. Here one program per sampled row
reads its conditional (and unconditional) logits once per pass straight from the backbone's
full-vocabulary output and writes one token and one log-prob:

1. combine `u + s (c - u)` over the image codes `[col0, col0 + K)` and scale by 1 / temperature
   (temperature 0: greedy, no scaling), tracking the max;
2. top-k (k > 0): the exact k-th largest value by bisection on the float's order-preserving
   integer key, 32 counting passes; every value >= it is kept, so ties at the k-th value are
   kept, as `torch.topk` + `masked_fill(x < kth)` does in `earl.generate.process_logits`;
3. the draw by Gumbel-max (argmax of x + Gumbel noise from Triton's Philox `tl.rand`), which is a
   draw from softmax(x) over the kept codes, and the log-sum-exp of the kept codes, so the
   returned log-prob is that of the distribution actually sampled from.

The random stream is not torch's: the same seed gives different codes than the PyTorch path, with
the same distribution (checked by a chi-square test in `tests/kernels/test_sampling.py`). Top-p
is not fused (it needs a sort); `earl.generate` uses the PyTorch path for it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _processed(ptr_c, ptr_u, offs, mask, scale, inv_temp, USE_CFG: tl.constexpr):
    """The processed logits of one block of codes (-inf outside the codebook)."""
    x = tl.load(ptr_c + offs, mask=mask, other=float("-inf")).to(tl.float32)
    if USE_CFG:
        u = tl.load(ptr_u + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask, u + scale * (x - u), float("-inf"))
    return x * inv_temp


@triton.jit
def _order_key(x):
    """An int32 whose signed order is the float32 order of x (for finite values and -inf)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _cfg_sample_kernel(LOGITS, TOK, LOGP, stride_row, n_cond, col0, K, scale, inv_temp, top_k, seed,
                       USE_CFG: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    ptr_c = LOGITS + row.to(tl.int64) * stride_row + col0
    ptr_u = LOGITS + (row + n_cond).to(tl.int64) * stride_row + col0
    offs0 = tl.arange(0, BLOCK)

    # the order key of the k-th largest value: the largest t with count(key >= t) >= k
    threshold = -2147483647 - 1  # every key passes
    if USE_TOPK:
        kmax = -2147483647 - 1
        kmin = 2147483647
        for start in range(0, K, BLOCK):
            offs = start + offs0
            m = offs < K
            key = _order_key(_processed(ptr_c, ptr_u, offs, m, scale, inv_temp, USE_CFG))
            kmax = tl.maximum(kmax, tl.max(tl.where(m, key, -2147483647 - 1), 0))
            kmin = tl.minimum(kmin, tl.min(tl.where(m, key, 2147483647), 0))
        lo = kmin.to(tl.int64)  # count(key >= lo) = K >= k
        hi = kmax.to(tl.int64) + 1  # count(key >= hi) = 0 < k
        for _ in range(33):  # the gap halves each pass: 2^32 -> 1
            if hi - lo > 1:
                mid = lo + (hi - lo) // 2
                count = 0
                for start in range(0, K, BLOCK):
                    offs = start + offs0
                    m = offs < K
                    key = _order_key(_processed(ptr_c, ptr_u, offs, m, scale, inv_temp, USE_CFG)).to(tl.int64)
                    count += tl.sum(tl.where(m & (key >= mid), 1, 0), 0)
                if count >= top_k:
                    lo = mid
                else:
                    hi = mid
        threshold = lo.to(tl.int32)

    # one pass: log-sum-exp of the kept codes and the argmax of x (+ Gumbel noise)
    run_max = float("-inf")
    run_sum = 0.0
    best = float("-inf")
    best_idx = 0
    best_x = 0.0
    for start in range(0, K, BLOCK):
        offs = start + offs0
        m = offs < K
        x = _processed(ptr_c, ptr_u, offs, m, scale, inv_temp, USE_CFG)
        keep = m & (_order_key(x) >= threshold)
        x = tl.where(keep, x, float("-inf"))
        blk_max = tl.max(x, 0)
        new_max = tl.maximum(run_max, blk_max)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.where(keep, tl.exp(x - safe), 0.0), 0)
        run_max = new_max
        if GREEDY:
            score = x
        else:
            r = tl.rand(seed, row * K + offs)
            r = tl.minimum(tl.maximum(r, 1e-12), 1.0 - 1e-7)
            score = tl.where(keep, x - tl.log(-tl.log(r)), float("-inf"))
        blk_best = tl.max(score, 0)
        blk_idx = tl.min(tl.where(score == blk_best, offs, 2147483647), 0)  # first of ties, like argmax
        blk_x = tl.sum(tl.where(offs == blk_idx, x, 0.0), 0)
        better = blk_best > best
        best_idx = tl.where(better, blk_idx, best_idx)
        best_x = tl.where(better, blk_x, best_x)
        best = tl.maximum(best, blk_best)
    tl.store(TOK + row, best_idx.to(tl.int64))
    tl.store(LOGP + row, best_x - run_max - tl.log(run_sum))


def cfg_sample(logits: torch.Tensor, n_rows: int, col0: int, col1: int, guidance_scale: float = 1.0,
               temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one image code per row from the backbone's full-vocabulary logits.

    `logits` (R, V): rows `[0, n_rows)` conditional, and with `guidance_scale != 1` rows
    `[n_rows, 2 n_rows)` their unconditional twins; codes are the vocabulary ids `[col0, col1)`.
    Returns (codes (n_rows,) in `[0, col1 - col0)`, log-probs (n_rows,) of each code under the
    distribution it was drawn from), as `earl.generate.process_logits` + `sample_from` would, with
    Triton's random stream (`seed`, distinct per call) instead of torch's.
    """
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"cfg_sample: logits must be (rows, vocab) with contiguous rows, got {tuple(logits.shape)}")
    use_cfg = guidance_scale != 1.0
    if logits.shape[0] < n_rows * (2 if use_cfg else 1):
        raise ValueError(f"cfg_sample: {logits.shape[0]} logit rows for {n_rows} rows"
                         f"{' and their unconditional twins' if use_cfg else ''}")
    K = col1 - col0
    if not 0 <= col0 < col1 <= logits.shape[1]:
        raise ValueError(f"cfg_sample: code range [{col0}, {col1}) outside a vocabulary of {logits.shape[1]}")
    greedy = temperature == 0
    tok = torch.empty(n_rows, dtype=torch.long, device=logits.device)
    logp = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    block = min(4096, triton.next_power_of_2(K))
    _cfg_sample_kernel[(n_rows,)](
        logits, tok, logp, logits.stride(0), n_rows, col0, K, float(guidance_scale),
        1.0 if greedy else 1.0 / temperature, int(top_k), int(seed) & 0x7FFFFFFF,
        USE_CFG=use_cfg, GREEDY=greedy, USE_TOPK=0 < top_k < K, BLOCK=block)
    return tok, logp
