"""Triton attention kernels against a float64 reference (under TRITON_INTERPRET=1 on a CPU).

Shapes cover odd lengths, GQA ratios 1/4/8, head dims 64 and 128, several cache lengths, chunked
prefill (fewer queries than keys) and left padding. On a CPU the kernels run under Triton's interpreter in fp32 and fp16; on a GPU (the
device machine's `recipes/gpu/checks.sh`) they run compiled, and bf16 is added: the interpreter's
`tl.dot` is wrong on bf16 (triton#11584), so bf16 can only be checked there.
"""

import pytest
import torch

from earl.kernels.attention import decode_attention, prefill_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}  # bf16: 8 mantissa bits, eps 7.8e-3


def reference(q, k, v, start, scale=None):
    """softmax(q k^T) v in float64 with the causal + left-padding mask; (B, Lq, H, D); empty rows give 0."""
    q, k, v, start = (t.cpu() for t in (q, k, v, start))
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    k = k.double().repeat_interleave(H // Hkv, dim=1)
    v = v.double().repeat_interleave(H // Hkv, dim=1)
    s = (q.double() @ k.transpose(-1, -2)) * (scale if scale is not None else D ** -0.5)
    cols = torch.arange(Lk)
    q_pos = torch.arange(Lk - Lq, Lk)
    visible = (cols[None, None, :] >= start[:, None, None]) & (cols[None, None, :] <= q_pos[None, :, None])
    s = s.masked_fill(~visible[:, None], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no visible key: all -inf -> nan -> 0
    return (p @ v).transpose(1, 2)


def rel_err(out, ref):
    return ((out.cpu().double() - ref).abs().max() / ref.abs().max()).item()


def make(B, H, Hkv, Lq, Lk, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    start = torch.randint(0, max(1, Lk // 3), (B,), generator=g)
    start[0] = 0  # one row without padding
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), start.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Hkv,Lq,Lk,D", [
    (2, 4, 4, 37, 37, 64),    # GQA ratio 1, odd length, full prefill
    (1, 8, 2, 50, 50, 128),   # ratio 4, head dim 128
    (3, 8, 1, 19, 45, 64),    # ratio 8, chunked prefill: 19 new queries after 26 cached keys
    (2, 4, 1, 2, 70, 64),     # two tokens at once into a cache (earl feeds a row's last code + <eol>)
])
@pytest.mark.slow
def test_prefill_matches_float64(B, H, Hkv, Lq, Lk, D, dtype):
    q, k, v, start = make(B, H, Hkv, Lq, Lk, D, dtype, seed=Lq * 31 + Lk)
    out = prefill_attention(q, k, v, start, block_m=16, block_n=16)
    assert out.shape == (B, Lq, H, D) and out.dtype == dtype
    ref = reference(q, k, v, start)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Hkv,Lk,D,splits", [
    (2, 4, 4, 1, 64, None),     # a cache of one key
    (3, 8, 2, 130, 64, 3),      # ratio 4, three splits, odd cache length
    (2, 8, 1, 300, 128, None),  # ratio 8, head dim 128, default split count
    (1, 32, 8, 77, 128, 2),     # Emu3-8B's head layout (32 query heads over 8 KV heads)
])
def test_decode_matches_float64(B, H, Hkv, Lk, D, splits, dtype):
    q, k, v, start = make(B, H, Hkv, 1, Lk, D, dtype, seed=Lk * 7 + H)
    out = decode_attention(q, k, v, start, num_splits=splits, block_n=32)
    assert out.shape == (B, 1, H, D) and out.dtype == dtype
    assert rel_err(out, reference(q, k, v, start)) < TOL[dtype]


def test_a_split_with_only_padding_does_not_poison_the_merge():
    """Row 1's first split holds only hidden (padding) keys: its statistics must drop out of the merge."""
    q, k, v, _ = make(2, 4, 2, 1, 96, 64, torch.float32, seed=3)
    start = torch.tensor([0, 70], device=DEVICE)
    out = decode_attention(q, k, v, start, num_splits=3, block_n=32)
    assert torch.isfinite(out).all()
    assert rel_err(out, reference(q, k, v, start)) < 1e-5


def test_padded_query_rows_are_zero_and_others_unaffected():
    q, k, v, _ = make(1, 2, 2, 12, 12, 64, torch.float32, seed=5)
    start = torch.tensor([5], device=DEVICE)
    out = prefill_attention(q, k, v, start, block_m=16, block_n=16)
    assert torch.equal(out[0, :5], torch.zeros_like(out[0, :5]))  # queries before the first visible key
    assert rel_err(out, reference(q, k, v, start)) < 1e-5


def test_bad_shapes_are_refused():
    q = torch.randn(1, 6, 4, 64, device=DEVICE)
    k = torch.randn(1, 4, 4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        prefill_attention(q, k, k)
    with pytest.raises(ValueError, match="one query per row"):
        decode_attention(torch.randn(1, 4, 2, 64, device=DEVICE), k, k)


def test_bench_attention_code_path_under_the_interpreter():
    """The GPU benchmark's code at tiny sizes; under the interpreter its times are flagged as not a measurement."""
    from earl.kernels.timing import bench_attention, format_table

    res = bench_attention(batch_sizes=(2,), cache_lengths=(40,), prefill_lengths=(24,), heads=4, kv_heads=2,
                          head_dim=64, dtype=torch.float32, repeats=1)
    assert res["measurement"] == (DEVICE == "cuda") and len(res["decode"]) == 1 and len(res["prefill"]) == 1
    assert res["decode"][0]["max_abs_err_vs_sdpa"] < 1e-4 and res["prefill"][0]["max_abs_err_vs_sdpa"] < 1e-4
    assert ("not a measurement" in format_table(res)) == (DEVICE != "cuda")
