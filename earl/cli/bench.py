"""`earl bench`: speed benchmarks (the image sampler, the reward model's text loops, the Triton
attention kernels)."""

from __future__ import annotations

import os

from earl.errors import EarlError
from earl.io import atomic_write_json


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _cmd_generate(args) -> None:
    # lazy: the benchmark builds models with torch and transformers
    from earl.generation_bench import bench_generate, format_table

    if args.schedule == "sequential" and args.window is not None:
        raise EarlError("--window applies to --schedule jacobi (the greedy Jacobi rows it adds)")
    try:
        windows = _ints(args.window or "4,8")
    except ValueError:
        raise EarlError(f"--window {args.window!r}: expected comma-separated integers >= 1, e.g. 4,8") from None
    if not windows or min(windows) < 1:
        raise EarlError(f"--window {args.window!r}: expected comma-separated integers >= 1, e.g. 4,8")
    res = bench_generate(size=args.size, image_size=args.image_size, batch_sizes=_ints(args.batch_sizes),
                         guidance_scale=args.guidance_scale, repeats=args.repeats, seed=args.seed,
                         num_threads=args.threads, device=args.device, dtype=args.dtype, attention=args.attention,
                         schedule=args.schedule, windows=windows, engine=args.engine)
    print(format_table(res))
    if args.out:
        atomic_write_json(args.out, res)
        print(f"results written to {args.out}")


def _cmd_text(args) -> None:
    # lazy: the benchmark builds models with torch and transformers
    from earl.generation_bench import bench_text, format_text_table

    res = bench_text(size=args.size, batch_size=args.batch_size, prompt_len=args.prompt_len,
                     new_tokens=args.new_tokens, prompts=args.prompts, traces=args.traces, repeats=args.repeats,
                     seed=args.seed, num_threads=args.threads)
    print(format_text_table(res))
    if args.out:
        atomic_write_json(args.out, res)
        print(f"results written to {args.out}")


def _cmd_attention(args) -> None:
    # lazy: torch; the kernels' timing module only once a GPU (or Triton's interpreter) is there to time
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise EarlError("earl bench attention needs a GPU (on a CPU, TRITON_INTERPRET=1 runs the code path at tiny "
                        "sizes, without meaningful times)")
    from earl.kernels.timing import bench_attention, format_table

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    res = bench_attention(_ints(args.batch_sizes), _ints(args.cache_lengths), _ints(args.prefill_lengths), args.heads,
                          args.kv_heads, args.head_dim, dtype, args.repeats)
    print(format_table(res))
    if args.out:
        atomic_write_json(args.out, res)


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    bg = bench.add_parser("generate", help="image tokens/s of earl's sampler vs transformers.generate (CFG)")
    bg.add_argument("--size", default="shapes-tiny",
                    help="named backbone size, or emu3-8b (Emu3-8B's shape; use a GPU, bf16, --image-size 256)")
    bg.add_argument("--image-size", type=int, default=64, help="image side in pixels (grid = size / 8)")
    bg.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes")
    bg.add_argument("--guidance-scale", type=float, default=3.0)
    bg.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median; after 1 warm-up)")
    bg.add_argument("--threads", type=int, default=2, help="torch intra-op threads (0 = leave torch's default)")
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("--device", default="cpu", help="cpu or cuda")
    bg.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bg.add_argument("--attention", default="sdpa", choices=["sdpa", "earl_triton"])
    bg.add_argument("--schedule", default="sequential", choices=["sequential", "jacobi"],
                    help="jacobi: also decode greedily, sequentially and with speculative Jacobi decoding at each "
                         "--window, and report their forward passes, tokens per pass, time and grid identity")
    bg.add_argument("--window", default=None, metavar="N[,N...]",
                    help="with --schedule jacobi: codes fed and verified per forward (default 4,8)")
    bg.add_argument("--engine", default="earl", choices=["earl", "vllm"],
                    help="vllm: also time vLLM on the same weights without CFG, against earl without CFG "
                         "(earl.generate.vllm_engine; needs vllm installed)")
    bg.add_argument("--out", default=None, help="write the results as JSON here")
    bg.set_defaults(func=_cmd_generate)

    bt = bench.add_parser("text", help="the reward model's text loops (greedy verdicts, GCPO's sampler): "
                                       "Hugging Face forward vs earl.lean, on a CPU")
    bt.add_argument("--size", default="shapes-tiny", help="named backbone size")
    bt.add_argument("--batch-size", type=int, default=16, help="greedy verdicts per call")
    bt.add_argument("--prompt-len", type=int, default=300)
    bt.add_argument("--new-tokens", type=int, default=320, help="budget per trace (the rrm recipes' 320)")
    bt.add_argument("--prompts", type=int, default=4, help="GCPO: images per call")
    bt.add_argument("--traces", type=int, default=8, help="GCPO: traces per image")
    bt.add_argument("--repeats", type=int, default=3)
    bt.add_argument("--threads", type=int, default=2)
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--out", default=None, help="write the results as JSON here")
    bt.set_defaults(func=_cmd_text)

    ba = bench.add_parser("attention", help="Triton attention kernels vs SDPA: decode bandwidth, prefill TFLOP/s (GPU)")
    ba.add_argument("--batch-sizes", default="1,16")
    ba.add_argument("--cache-lengths", default="1100,2160", help="decode: KV-cache lengths")
    ba.add_argument("--prefill-lengths", default="1100")
    ba.add_argument("--heads", type=int, default=32)
    ba.add_argument("--kv-heads", type=int, default=8)
    ba.add_argument("--head-dim", type=int, default=128)
    ba.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ba.add_argument("--repeats", type=int, default=20)
    ba.add_argument("--out", default=None, help="write the results as JSON here")
    ba.set_defaults(func=_cmd_attention)
