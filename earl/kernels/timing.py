"""`earl bench attention`: the Triton kernels against SDPA (and flash-attn when installed).

Decode (one new token per row over a KV cache): time per call, and the bandwidth it achieves
reading K and V, against the device's measured copy bandwidth (a `clone` of a tensor of the same
size: bytes read + written over time). Prefill (causal, Lq = Lk): time and TFLOP/s, counting the
causal half of 4 * B * H * L^2 * D. Defaults are Emu3-8B's attention (32 query heads, 8 KV heads,
head dim 128, bf16) at the cache lengths of a 256x256 edit (~1,100 prompt + ~1,060 generated tokens).

Every timed kernel is first checked against SDPA on the same inputs (max abs difference reported).
On a CPU the kernels only run under Triton's interpreter: the command then runs at tiny sizes and
marks its times as not a measurement (it exists so the code path is tested without a GPU).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn, repeats: int) -> float:
            fn()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(repeats):
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            return sorted(times)[len(times) // 2]
    else:
        def run(fn, repeats: int) -> float:
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return sorted(times)[len(times) // 2]
    return run


def _sdpa(q, k, v, causal: bool):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)


def bench_attention(batch_sizes=(1, 16), cache_lengths=(1100, 2160), prefill_lengths=(1100,), heads: int = 32,
                    kv_heads: int = 8, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, repeats: int = 20,
                    device: str | None = None) -> dict:
    # here, not at the top: it imports triton, an optional GPU package
    from earl.kernels.attention import decode_attention, prefill_attention

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    interpreted = dev.type != "cuda"
    timer = _timer(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (Triton interpreter)",
            "dtype": str(dtype).removeprefix("torch."), "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "measurement": not interpreted, "decode": [], "prefill": []}
    big = torch.empty(64 * 2**20 if not interpreted else 2**16, dtype=torch.uint8, device=dev)
    t_copy = timer(lambda: big.clone(), repeats)
    rows["copy_bandwidth_gb_s"] = 2 * big.numel() / t_copy / 1e9

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dtype)

    for B in batch_sizes:
        for L in cache_lengths:
            q, k, v = randn(B, heads, 1, head_dim), randn(B, kv_heads, L, head_dim), randn(B, kv_heads, L, head_dim)
            ref = _sdpa(q, k, v, causal=False)
            err = float((decode_attention(q, k, v).float() - ref.float()).abs().max())
            t_kernel = timer(lambda q=q, k=k, v=v: decode_attention(q, k, v), repeats)
            t_sdpa = timer(lambda q=q, k=k, v=v: _sdpa(q, k, v, causal=False), repeats)
            read = 2 * k.numel() * k.element_size()
            rows["decode"].append({"batch": B, "cache": L, "kernel_ms": t_kernel * 1e3, "sdpa_ms": t_sdpa * 1e3,
                                   "speedup_vs_sdpa": t_sdpa / t_kernel, "kv_gb_s": read / t_kernel / 1e9,
                                   "share_of_copy_bw": read / t_kernel / 1e9 / rows["copy_bandwidth_gb_s"],
                                   "max_abs_err_vs_sdpa": err})
    flash = None
    try:
        from flash_attn import flash_attn_func as flash  # optional extra
    except ImportError:
        pass
    for B in batch_sizes[:1]:
        for L in prefill_lengths:
            q, k, v = randn(B, heads, L, head_dim), randn(B, kv_heads, L, head_dim), randn(B, kv_heads, L, head_dim)
            err = float((prefill_attention(q, k, v).float() - _sdpa(q, k, v, causal=True).float()).abs().max())
            t_kernel = timer(lambda q=q, k=k, v=v: prefill_attention(q, k, v), repeats)
            t_sdpa = timer(lambda q=q, k=k, v=v: _sdpa(q, k, v, causal=True), repeats)
            flops = 4 * B * heads * L * L * head_dim / 2
            row = {"batch": B, "length": L, "kernel_ms": t_kernel * 1e3, "sdpa_ms": t_sdpa * 1e3,
                   "speedup_vs_sdpa": t_sdpa / t_kernel, "kernel_tflops": flops / t_kernel / 1e12,
                   "max_abs_err_vs_sdpa": err}
            if flash is not None and dev.type == "cuda":
                qf, kf, vf = (t.transpose(1, 2).contiguous() for t in (q, k, v))
                row["flash_attn_ms"] = timer(lambda qf=qf, kf=kf, vf=vf: flash(qf, kf, vf, causal=True), repeats) * 1e3
            rows["prefill"].append(row)
    return rows


def format_table(res: dict) -> str:
    note = "" if res["measurement"] else " — INTERPRETER: times are not a measurement"
    lines = [f"{res['device']}, {res['dtype']}, {res['heads']} heads / {res['kv_heads']} KV heads, head dim "
             f"{res['head_dim']}; copy bandwidth {res['copy_bandwidth_gb_s']:.0f} GB/s{note}", "",
             "| decode: batch | cache | kernel ms | SDPA ms | speedup | K+V GB/s | share of copy bw | max err |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["decode"]:
        lines.append(f"| {r['batch']} | {r['cache']} | {r['kernel_ms']:.3f} | {r['sdpa_ms']:.3f} | "
                     f"{r['speedup_vs_sdpa']:.2f}x | {r['kv_gb_s']:.0f} | {r['share_of_copy_bw']:.0%} | "
                     f"{r['max_abs_err_vs_sdpa']:.1e} |")
    lines += ["", "| prefill: batch | length | kernel ms | SDPA ms | speedup | TFLOP/s | flash-attn ms | max err |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["prefill"]:
        fa = f"{r['flash_attn_ms']:.3f}" if "flash_attn_ms" in r else "n/a"
        lines.append(f"| {r['batch']} | {r['length']} | {r['kernel_ms']:.3f} | {r['sdpa_ms']:.3f} | "
                     f"{r['speedup_vs_sdpa']:.2f}x | {r['kernel_tflops']:.1f} | {fa} | {r['max_abs_err_vs_sdpa']:.1e} |")
    return "\n".join(lines)

