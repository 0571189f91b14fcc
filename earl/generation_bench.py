"""`earl bench generate`: earl's sampler against `transformers.generate` doing the same job.

Both sample an h x w code grid per prompt from the *same* random-weight editor, at temperature 1
with classifier-free guidance, and both must return well-formed grids (checked with
`layout.parse_image` on every output, outside the timed region) so the comparison is of equal work:

    earl          sample_edits: cond + uncond rows in one batched forward per step, sampling on
                  the image-id slice, a row's last code and its <eol> fed in one forward; on a
                  CPU its forward is `earl.lean` (also timed with the Hugging Face forward)
    transformers  backbone.generate(do_sample=True, guidance_scale=s, negative_prompt_ids=...,
                  prefix_allowed_tokens_fn=grid): what a transformers user writes. Its CFG is
                  `UnbatchedClassifierFreeGuidanceLogitsProcessor`, which runs the unconditional
                  branch as a second forward pass per step; the grid constraint is a Python
                  callback per row per step; <eol>, <eof>, <eoi> each cost a forward.

Same distribution: transformers mixes full-vocabulary log-softmaxes, `u' + s(c' - u')`, then masks
to the allowed ids; earl mixes raw logits on the image slice. The two differ by a per-row constant,
which the softmax over the allowed ids removes, so both sample every code from the same law.

Notes on transformers 5.x, read from `transformers/generation/`:
- `top_k` defaults to 50 in `GenerationConfig`; we pass `top_k=0` (off) to match earl's sampling.
- the CFG processor calls `model(ids, attention_mask=...)` without `position_ids`, so a left-padded
  negative prompt would be shifted by its padding. Here every unconditional prompt
  (`<bos>` + source image) has the same length, so no padding arises and positions are exact.
- the CFG processor's first call runs the unconditional prompt without `logits_to_keep`, i.e. it
  computes full-vocabulary logits at every prompt position; that cost is part of its design.

With `schedule="jacobi"` the run also decodes greedily (CFG on), sequentially and with speculative
Jacobi decoding at each window (`earl.generate.jacobi`), in the same rounds: their forward passes,
tokens per pass, time, and whether every Jacobi grid equals the sequential greedy one. These rows
measure what a schedule costs on this backbone's predictions; random weights agree with their own
guesses less than a trained editor does (`recipes/shapes/jacobi_bench.py` runs the bundled one).

On a CPU the run also times the matrix products of earl's generation alone (`matmul_floor_call`):
what no implementation of the same model in the same dtype can avoid, so transformers' time over it
bounds the ratio any of them could reach here.

Throughput = sampled image codes per second (h*w per image), end to end per call (prompt
building, prefill and decoding; parsing the output is checked outside the timer), median of
`repeats` calls after one warm-up call each, timed round-robin across the methods. Small CPU ops
degrade badly when other processes share the cores, so the CPU load just before the run is
recorded and the table warns when it was not idle.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from earl.errors import EarlError
from earl.generate import (
    DecodeCache,
    GenerationOutput,
    SamplingConfig,
    choose_decoder,
    greedy_text,
    sample_edits,
    sample_traces_watching,
)
from earl.generate.vllm_engine import VLLMEngine, check_engine, export_backbone
from earl.kernels.hf import use_triton_attention
from earl.layout import EditLayout, build_layout_for_tokenizer
from earl.lean import LeanLlama
from earl.model import UnifiedEditor
from earl.text import build_word_tokenizer
from tokenizer import VQConfig, VQTokenizer

# A few instructions of different lengths, so the conditional prompts need left padding.
INSTRUCTIONS = [
    "make the red circle blue",
    "change the square to green",
    "remove the small triangle",
    "move the large blue square one cell to the left and make it red",
]
METHODS = ("earl_cfg", "earl_cfg_hf", "earl_cfg_static", "transformers_cfg", "earl_nocfg")  # earl_cfg_hf: CPU only

# Emu3-8B's backbone shape (Emu3-Gen/Chat config): random weights stand in for the checkpoint, which
# timing does not need. Its VQ codebook has 32,768 codes at x8 downsampling; the rest of the
# 184,622-entry vocabulary is text (unused rows here, but the lm_head reads them every step).
EMU3_8B_SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=184_622, rope_theta=1_000_000.0,
                     max_position_embeddings=9216)
EMU3_CODEBOOK = 32_768


def build_bench_model(size: str, image_size: int, seed: int = 0, device: str = "cpu",
                      dtype: torch.dtype = torch.float32):
    """(backbone, layout, (h, w)) with random weights: a named ShapesEdit size (with an untrained x8 VQ
    tokenizer of 1000 codes), or "emu3-8b" (Emu3-8B's shape, built directly on `device`)."""
    text = build_word_tokenizer(INSTRUCTIONS)
    torch.manual_seed(seed)
    if size == "emu3-8b":
        from transformers import LlamaConfig, LlamaForCausalLM

        if image_size % 8:
            raise EarlError(f"image_size {image_size} is not a multiple of 8 (Emu3's downsample factor)")
        layout = build_layout_for_tokenizer(text, EMU3_CODEBOOK)
        cfg = LlamaConfig(**EMU3_8B_SHAPE, tie_word_embeddings=False, bos_token_id=layout.ids.bos,
                          eos_token_id=layout.ids.eos, pad_token_id=layout.ids.pad)
        if cfg.vocab_size < layout.vocab.image_ids[1]:
            raise EarlError(f"vocabulary {cfg.vocab_size} too small for the layout's {layout.vocab.image_ids[1]} ids")
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype: 8B params in fp32 would need 32 GB
        try:
            with torch.device(device):
                backbone = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(default)
        return backbone.eval(), layout, (image_size // 8, image_size // 8)
    vq = VQTokenizer(VQConfig()).eval()
    editor = UnifiedEditor.build(size, vq, text, image_size=image_size, seed=seed).eval()
    return editor.backbone.to(device=device, dtype=dtype), editor.layout, editor.config.grid


# ---- the two samplers, each returning (N, T) completions that start with the image header --------
def run_earl(backbone, layout: EditLayout, instructions: list[str], sources: torch.Tensor,
             guidance_scale: float, generator: torch.Generator | None, temperature: float = 1.0,
             fused_step: bool = True, decoder: str = "auto", cache: DecodeCache | None = None,
             schedule: str = "sequential", window: int | None = None) -> GenerationOutput:
    """`fused_step`: the Triton sampling step on a GPU (`earl.kernels.sampling`); `decoder`, `cache`,
    `schedule`, `window`: as `sample_edits` takes them (the benchmark keeps one `DecodeCache` per backbone
    across its calls)."""
    cfg = SamplingConfig(guidance_scale=guidance_scale, temperature=temperature, fused_step=fused_step)
    return sample_edits(backbone, layout, instructions, sources, cfg, generator=generator, decoder=decoder,
                        cache=cache, schedule=schedule, window=window)


def static_decoder(device: torch.device) -> str:
    """The benchmark's "earl CFG static" method: the preallocated cache with its decode step captured as
    a CUDA graph on a GPU ("compiled"), run eagerly elsewhere ("static")."""
    return "compiled" if torch.device(device).type == "cuda" else "static"


def feed_sizes(layout: EditLayout, h: int, w: int) -> list[int]:
    """Tokens per forward after the prefill in `sample_edits` (no thinking): the header at once, then a
    code per forward, a row's last code with its <eol>, and nothing after the last code."""
    return [len(layout.header(h, w))] + [2 if c == w - 1 else 1 for r in range(h) for c in range(w)][:-1]


def matmul_floor_call(backbone, layout: EditLayout, instructions: list[str], sources: torch.Tensor, cfg_rows: bool):
    """A call doing only the matrix products of one earl CFG generation, at the shapes `earl.lean` runs
    them (q|k|v and gate|up fused; every layer; the lm_head at the last position), on random inputs.

    Why: at small sizes a CPU spends most of a forward outside its matmuls, and this is the part no
    faster implementation of the same model in the same dtype removes; transformers' time over it
    bounds the ratio any such implementation could reach against transformers here."""
    h, w = sources.shape[1:]
    prompts = [layout.prompt(i, s) for i, s in zip(instructions, sources)]
    if cfg_rows:
        prompts += [layout.prompt(None, s) for s in sources]
    R, P = layout.pad_prompts(prompts)["input_ids"].shape
    net = LeanLlama(backbone, R, 1)
    d, f = backbone.config.hidden_size, net.layers[0]["down"].shape[1]
    sizes = [P] + feed_sizes(layout, h, w)
    g = torch.Generator(device=net.device).manual_seed(0)
    inputs = {n: [torch.randn(R * n, k, generator=g, device=net.device, dtype=net.dtype)  # made outside the timer
                  for k in (d, net.n_heads * net.head_dim, f)] for n in set(sizes)}

    def products():
        for n in sizes:
            x, att, act = inputs[n]
            for lw in net.layers:
                F.linear(x, lw["qkv"])
                F.linear(att, lw["o"])
                F.linear(x, lw["gate_up"])
                F.linear(act, lw["down"])
            F.linear(x[:R], net.lm_head)
    return products


def grid_constraint(layout: EditLayout, prompt_len: int, h: int, w: int):
    """`prefix_allowed_tokens_fn` for an h x w grid: codes inside a row, <eol> at row ends, <eof> <eoi>.

    `sent` is the whole (padded prompt + generated) row, so the step is `len(sent) - prompt_len`.
    The allowed lists are built once, as a careful transformers user would.
    """
    v = layout.vocab
    codes, eol, tail = list(range(*v.image_ids)), [v.eol], [[v.eof], [v.eoi]]
    body = h * (w + 1)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        step = sent.shape[-1] - prompt_len
        if step >= body:
            return tail[min(step - body, 1)]
        return eol if step % (w + 1) == w else codes

    return allowed


def run_transformers(backbone, layout: EditLayout, instructions: list[str], sources: torch.Tensor,
                     guidance_scale: float, seed: int, greedy: bool = False) -> torch.Tensor:
    """`backbone.generate` with transformers' own CFG and a grid constraint; greedy=True is for parity checks."""
    device = next(backbone.parameters()).device
    N, h, w = sources.shape
    header = layout.header(h, w)
    cond = layout.pad_prompts([layout.prompt(i, s) + header for i, s in zip(instructions, sources)])
    kw = {}
    if guidance_scale != 1.0:
        uncond = layout.pad_prompts([layout.prompt(None, s) + header for s in sources])  # left-padded (a no-op here)
        kw = dict(guidance_scale=guidance_scale, negative_prompt_ids=uncond["input_ids"].to(device),
                  negative_prompt_attention_mask=uncond["attention_mask"].to(device))
    L = cond["input_ids"].shape[1]
    torch.manual_seed(seed)  # generate() samples from the global generator
    out = backbone.generate(
        input_ids=cond["input_ids"].to(device), attention_mask=cond["attention_mask"].to(device),
        **(dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)),
        max_new_tokens=h * (w + 1) + 2,
        prefix_allowed_tokens_fn=grid_constraint(layout, L, h, w),
        pad_token_id=layout.ids.pad, eos_token_id=layout.ids.eos, bos_token_id=layout.ids.bos,
        **kw,
    )
    new = out[:, L:].cpu()  # (N, h*(w+1)+2)
    return torch.cat([torch.tensor(header).expand(N, -1), new], dim=1)


def parse_grids(layout: EditLayout, completions: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h, w) codes; raises `LayoutError` if any row is not a well-formed h x w image."""
    return torch.stack([layout.parse_image(row, h, w) for row in completions])


# ---- timing -----------------------------------------------------------------------------------
def _timed_round_robin(calls: dict, check, repeats: int) -> tuple[dict[str, list[float]], dict[str, list]]:
    """One warm-up call each, then `repeats` rounds timing every call once (round-robin, so a change in
    background load hits all methods alike). `check` verifies every output outside the timer.

    Returns ({name: seconds per timed call}, {name: check results of all its calls, warm-up first}).
    """
    checks = {name: [check(call())] for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            out = call()
            times[name].append(time.perf_counter() - t0)
            checks[name].append(check(out))
    return times, checks


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all cores busy over `seconds` (Linux /proc/stat); None where unavailable."""
    def snapshot():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t1, i1 = snapshot()
        time.sleep(seconds)
        t2, i2 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i2 - i1) / max(t2 - t1, 1)


def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def _measure_batch(backbone, layout: EditLayout, B: int, h: int, w: int, guidance_scale: float, repeats: int,
                   seed: int, cache: DecodeCache | None = None, windows: tuple[int, ...] = (),
                   vllm: VLLMEngine | None = None) -> dict:
    """Time the methods on one batch of B prompts (same sources and instructions for each). `cache`: the
    static methods' `DecodeCache`, kept across calls (a captured graph is recorded once per shape).
    `windows`: also greedy sequential (`earl_greedy`) and Jacobi at each window (`earl_jacobi_w{N}`).
    `vllm`: an engine over the same weights, timed as "vllm_nocfg" against "earl_nocfg" (no CFG: vLLM
    cannot run it exactly)."""
    sources = torch.randint(0, layout.vocab.codebook_size, (B, h, w), generator=torch.Generator().manual_seed(seed))
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(B)]
    device = next(backbone.parameters()).device

    cache = cache if cache is not None else DecodeCache()
    static = static_decoder(device)

    def gen():
        return torch.Generator(device=device).manual_seed(seed)

    calls = {
        "earl_cfg": lambda: run_earl(backbone, layout, instructions, sources, guidance_scale, gen()),
        "earl_cfg_static": lambda: run_earl(backbone, layout, instructions, sources, guidance_scale, gen(),
                                            decoder=static, cache=cache),
        "transformers_cfg": lambda: run_transformers(backbone, layout, instructions, sources, guidance_scale, seed),
        "earl_nocfg": lambda: run_earl(backbone, layout, instructions, sources, 1.0, gen()),
    }
    if vllm is not None:
        plain = SamplingConfig(temperature=1.0)
        calls["vllm_nocfg"] = lambda: vllm.sample_edits(instructions, sources, plain, generator=gen()).completions
    if device.type == "cpu":  # earl's HF-forward path (on a GPU it is earl_cfg itself) and the matmul floor
        calls["earl_cfg_hf"] = lambda: run_earl(backbone, layout, instructions, sources, guidance_scale, gen(),
                                                decoder="hf")
        calls["matmul_floor"] = matmul_floor_call(backbone, layout, instructions, sources, cfg_rows=True)
    for window in windows:  # greedy: the Jacobi grids must be the sequential ones
        calls["earl_greedy"] = lambda: run_earl(backbone, layout, instructions, sources, guidance_scale, None, 0.0)
        calls[f"earl_jacobi_w{window}"] = (lambda n: lambda: run_earl(
            backbone, layout, instructions, sources, guidance_scale, None, 0.0, schedule="jacobi", window=n))(window)
    if device.type == "cuda":  # the fused sampling step's baseline: the same static run, PyTorch sampling
        calls["earl_cfg_static_unfused"] = lambda: run_earl(backbone, layout, instructions, sources, guidance_scale,
                                                            gen(), fused_step=False, decoder=static, cache=cache)
    row = {"batch_size": B}
    def check(out):
        if out is None:  # the matmul floor
            return None
        completions = out.completions if isinstance(out, GenerationOutput) else out
        grids = parse_grids(layout, completions, h, w)
        passes = out.forward_passes if isinstance(out, GenerationOutput) else None
        return len(grids), passes, completions.shape[1], grids

    times, checked = _timed_round_robin(calls, check, repeats)
    n_checked = {name: [c if c is None else c[0] for c in cs] for name, cs in checked.items()}
    if "matmul_floor" in calls:
        sec = statistics.median(times.pop("matmul_floor"))
        row["matmul_floor"] = {"seconds": sec, "ms_per_image": 1000 * sec / B}
    for name in times:
        sec = statistics.median(times[name])
        row[name] = {"seconds": sec, "seconds_all": times[name], "tokens_per_s": B * h * w / sec,
                     "ms_per_image": 1000 * sec / B, "well_formed": n_checked[name] == [B] * (repeats + 1)}
        row[name]["ms_per_decode_step"] = 1000 * sec / (h * w)  # earl: one forward per code (prefill included)
        _, passes, tokens, _ = checked[name][-1]
        if passes is not None:  # earl's sampler counts its forwards (prefill and header included)
            row[name]["forward_passes"], row[name]["tokens_per_pass"] = passes, tokens / passes
    for window in windows:
        jac, seq = row[f"earl_jacobi_w{window}"], row["earl_greedy"]
        reference = checked["earl_greedy"][-1][3]
        jac["same_as_sequential"] = all(torch.equal(c[3], reference) for c in checked[f"earl_jacobi_w{window}"])
        jac["passes_vs_sequential"] = jac["forward_passes"] / seq["forward_passes"]
        jac["time_vs_sequential"] = jac["seconds"] / seq["seconds"]
    row["speedup_cfg"] = row["earl_cfg"]["tokens_per_s"] / row["transformers_cfg"]["tokens_per_s"]
    row["speedup_cfg_static"] = row["earl_cfg_static"]["tokens_per_s"] / row["transformers_cfg"]["tokens_per_s"]
    if "vllm_nocfg" in row:
        row["vllm_vs_earl_nocfg"] = row["vllm_nocfg"]["tokens_per_s"] / row["earl_nocfg"]["tokens_per_s"]
    if "earl_cfg_hf" in row:
        row["speedup_cfg_hf"] = row["earl_cfg_hf"]["tokens_per_s"] / row["transformers_cfg"]["tokens_per_s"]
    if "matmul_floor" in row:  # the most any implementation of these matmuls could reach against transformers
        row["ceiling_vs_transformers"] = row["transformers_cfg"]["seconds"] / row["matmul_floor"]["seconds"]
    return row


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Measured device-memory bandwidth in bytes/s (a clone reads and writes `nbytes`); None on a CPU."""
    if device.type != "cuda":
        return None
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    x.clone()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        x.clone()
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * 10 / (start.elapsed_time(end) / 1000)


def bench_generate(size: str = "shapes-tiny", image_size: int = 64, batch_sizes=(1, 16), guidance_scale: float = 3.0,
                   repeats: int = 3, seed: int = 0, num_threads: int | None = None, device: str = "cpu",
                   dtype: str = "float32", attention: str = "sdpa", schedule: str = "sequential",
                   windows: tuple[int, ...] = (4, 8), engine: str = "earl") -> dict:
    """Image tokens/s of earl (with and without CFG, growing and static cache) and of
    `transformers.generate` (with CFG). On a GPU also the decode-step floor: weight bytes over the
    measured copy bandwidth (one step must read every weight once). `schedule="jacobi"`: also greedy
    sequential against Jacobi at each of `windows` (forward passes, tokens per pass, time, identity).
    `engine="vllm"` also times vLLM (`earl.generate.vllm_engine`) on the same weights without CFG, against
    earl without CFG; its start time is reported, outside the timed calls."""
    if schedule not in ("sequential", "jacobi"):
        raise EarlError(f"schedule {schedule!r}: expected sequential or jacobi")
    if schedule == "jacobi" and (not windows or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                    for n in windows)):
        raise EarlError(f"windows {windows!r}: expected integers >= 1 (the codes fed per forward)")
    windows = tuple(windows) if schedule == "jacobi" else ()
    if repeats < 1:
        raise EarlError(f"repeats must be >= 1, got {repeats}")
    if guidance_scale == 1.0:
        raise EarlError("guidance_scale must differ from 1: the benchmark compares CFG implementations")
    if num_threads:
        torch.set_num_threads(num_threads)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise EarlError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EarlError(f"device {device!r}: no CUDA device here")
    backbone, layout, (h, w) = build_bench_model(size, image_size, seed, device, getattr(torch, dtype))
    if attention == "earl_triton":
        use_triton_attention(backbone)  # says once why it falls back to SDPA where it must
    elif attention != "sdpa":
        raise EarlError(f"attention must be 'sdpa' or 'earl_triton', got {attention!r}")
    weight_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    bandwidth = copy_bandwidth(dev)
    load_before, busy_before = os.getloadavg(), cpu_busy_fraction()
    vllm, vllm_start, export = None, None, None
    if check_engine(engine) == "vllm":
        export = tempfile.TemporaryDirectory(prefix="earl-bench-vllm-")
        export_backbone(backbone, export.name)
        t0 = time.perf_counter()
        vllm = VLLMEngine(export.name, layout, dtype=dtype, max_model_len=backbone.config.max_position_embeddings)
        vllm_start = time.perf_counter() - t0
    cache = DecodeCache()  # the static methods' cache and compiled step, kept across every call of the run
    if windows and max(windows) > h * w:
        raise EarlError(f"window {max(windows)} is beyond the grid: {h}x{w} codes")
    try:
        rows = [_measure_batch(backbone, layout, B, h, w, guidance_scale, repeats, seed, cache, windows, vllm)
                for B in batch_sizes]
    finally:
        if export is not None:
            export.cleanup()
    machine = {**machine_info(), "cpu_busy_before": busy_before, "loadavg_before": list(load_before),
               "loadavg_after": list(os.getloadavg())}
    if dev.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(dev)
    return {
        "config": {"size": size, "image_size": image_size, "grid": [h, w], "codebook_size": layout.vocab.codebook_size,
                   "backbone_params": sum(p.numel() for p in backbone.parameters()), "device": str(dev),
                   "dtype": dtype, "attention": attention,
                   "decoders": {"earl_cfg": choose_decoder(backbone, dev), "earl_cfg_static": static_decoder(dev),
                                **({"earl_cfg_hf": "hf"} if dev.type == "cpu" else {})},
                   "guidance_scale": guidance_scale, "temperature": 1.0, "repeats": repeats, "seed": seed,
                   "schedule": schedule, "windows": list(windows), "engine": engine,
                   **({"vllm_start_seconds": vllm_start} if vllm is not None else {})},
        "floor": {"weight_bytes": weight_bytes, "copy_bandwidth_bytes_per_s": bandwidth,
                  "ms_per_decode_step": None if bandwidth is None else 1000 * weight_bytes / bandwidth},
        "machine": machine,
        "results": rows,
    }


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"{c['size']}, {c['image_size']} px ({c['grid'][0]}x{c['grid'][1]} codes), guidance {c['guidance_scale']}, "
             f"median of {c['repeats']}",
             "",
             "| batch | earl CFG tok/s | earl CFG, HF forward tok/s | earl CFG static tok/s | transformers CFG tok/s "
             "| earl / transformers | HF forward / transformers | static / transformers | earl CFG ms/img "
             "| transformers CFG ms/img | earl no-CFG tok/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        e, st, t, n = (r[k] for k in ("earl_cfg", "earl_cfg_static", "transformers_cfg", "earl_nocfg"))
        hf = f"{r['earl_cfg_hf']['tokens_per_s']:.0f}" if "earl_cfg_hf" in r else "n/a (= earl CFG)"
        hf_ratio = f"{r['speedup_cfg_hf']:.2f}x" if "speedup_cfg_hf" in r else "n/a"
        lines.append(f"| {r['batch_size']} | {e['tokens_per_s']:.0f} | {hf} | {st['tokens_per_s']:.0f} "
                     f"| {t['tokens_per_s']:.0f} | {r['speedup_cfg']:.2f}x | {hf_ratio} "
                     f"| {r['speedup_cfg_static']:.2f}x | {e['ms_per_image']:.1f} | {t['ms_per_image']:.1f} "
                     f"| {n['tokens_per_s']:.0f} |")
    if all("matmul_floor" in r for r in result["results"]):
        paths = {"earl_cfg": "earl (auto decoder)", "earl_cfg_hf": "earl, HF forward", "earl_cfg_static": "earl static",
                 "transformers_cfg": "transformers"}
        lines += ["", "Each path's time over the matmul floor (the matrix products of earl's CFG generation alone, "
                  "timed in the same rounds; 1.00x is the most any implementation of them could reach):", "",
                  "| batch | floor ms/img | " + " | ".join(paths.values()) + " |", "|---:|---:|" + "---:|" * len(paths)]
        for r in result["results"]:
            floor = r["matmul_floor"]["seconds"]
            lines.append(f"| {r['batch_size']} | {r['matmul_floor']['ms_per_image']:.1f} | "
                         + " | ".join(f"{r[k]['seconds'] / floor:.2f}x" if k in r else "n/a" for k in paths) + " |")
    lines += _schedule_table(result)
    f = result.get("floor", {})
    if f.get("ms_per_decode_step") is not None:
        lines += ["", f"decode-step floor: {f['weight_bytes'] / 1e9:.2f} GB of weights at "
                      f"{f['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s measured copy bandwidth = "
                      f"{f['ms_per_decode_step']:.2f} ms; earl CFG static per code (prefill included): "
                      + ", ".join(f"batch {r['batch_size']} {r['earl_cfg_static']['ms_per_decode_step']:.2f} ms"
                                  for r in result["results"])]
    if all("vllm_nocfg" in r for r in result["results"]):
        lines += ["", f"vLLM engine (no CFG, same weights; started in {c['vllm_start_seconds']:.1f} s, not timed):", "",
                  "| batch | earl no-CFG tok/s | vLLM no-CFG tok/s | vLLM / earl | earl no-CFG ms/img | vLLM ms/img |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in result["results"]:
            e, v = r["earl_nocfg"], r["vllm_nocfg"]
            lines.append(f"| {r['batch_size']} | {e['tokens_per_s']:.0f} | {v['tokens_per_s']:.0f} "
                         f"| {r['vllm_vs_earl_nocfg']:.2f}x | {e['ms_per_image']:.1f} | {v['ms_per_image']:.1f} |")
    if all("earl_cfg_static_unfused" in r for r in result["results"]):
        lines += ["", "fused sampling step (earl CFG static, PyTorch sampling / fused): "
                  + ", ".join(f"batch {r['batch_size']} {r['earl_cfg_static_unfused']['seconds'] / r['earl_cfg_static']['seconds']:.2f}x"
                              for r in result["results"])]
    m = result["machine"]
    busy = m["cpu_busy_before"]
    where = f"{m['gpu']} ({c['dtype']}, attention {c['attention']}); host " if "gpu" in m else ""
    lines += ["", where + f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads; CPU busy before the run: "
              f"{'n/a' if busy is None else f'{100 * busy:.0f}%'}; load average before/after (1 min, includes this "
              f"run): {m['loadavg_before'][0]:.2f} / {m['loadavg_after'][0]:.2f}"]
    if busy is not None and busy > 0.1:
        lines.append("warning: other processes were using the CPU; small-op timings degrade badly under contention "
                     "(torch threads wait for descheduled peers), re-run on an idle machine")
    return "\n".join(lines)


def _schedule_table(result: dict) -> list[str]:
    """The forward passes of each earl method, and with `schedule="jacobi"` the greedy schedules side by side."""
    rows = result["results"]
    lines = ["", "Forward passes per call (prefill and header included) and completion tokens per pass, per row:", "",
             "| batch | " + " | ".join(f"{k} passes / tok per pass" for k in ("earl_cfg", "earl_nocfg")) + " |",
             "|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | " + " | ".join(f"{r[k]['forward_passes']} / {r[k]['tokens_per_pass']:.2f}"
                                                           for k in ("earl_cfg", "earl_nocfg")) + " |")
    windows = result["config"].get("windows") or []
    if not windows:
        return lines
    lines += ["", "Greedy (CFG on), sequential against speculative Jacobi decoding, timed in the same rounds:", "",
              "| batch | schedule | forward passes | vs sequential | tokens per pass | ms/img | time vs sequential "
              "| same grids |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["earl_greedy"]
        lines.append(f"| {r['batch_size']} | sequential | {s['forward_passes']} | 1.00 | {s['tokens_per_pass']:.2f} "
                     f"| {s['ms_per_image']:.1f} | 1.00 | - |")
        for n in windows:
            j = r[f"earl_jacobi_w{n}"]
            lines.append(f"| {r['batch_size']} | jacobi w{n} | {j['forward_passes']} | {j['passes_vs_sequential']:.2f} "
                         f"| {j['tokens_per_pass']:.2f} | {j['ms_per_image']:.1f} | {j['time_vs_sequential']:.2f} "
                         f"| {'yes' if j['same_as_sequential'] else 'NO'} |")
    return lines


# ---- reward-model text: greedy verdicts and GCPO's sampled traces --------------------------------
TEXT_METHODS = ("generate_greedy", "lean_greedy", "hf_sampler", "lean_sampler")


def bench_text(size: str = "shapes-tiny", batch_size: int = 16, prompt_len: int = 300, new_tokens: int = 320,
               prompts: int = 4, traces: int = 8, repeats: int = 3, seed: int = 0,
               num_threads: int | None = None) -> dict:
    """Seconds for the reward model's two text loops on a random-weight backbone, on a CPU:
    `batch_size` greedy verdicts with `transformers.generate(output_logits=True)` (earl before
    2026-12-01) and with `earl.generate.greedy_text`; GCPO's sampler (`prompts` x `traces` rows at
    temperature 1) over the Hugging Face forward and over `earl.lean`. Same seed, so each pair must
    write the same tokens; `same_output` records whether it did (float rounding may flip a near-tie)."""
    if repeats < 1 or min(batch_size, prompt_len, new_tokens, prompts, traces) < 1:
        raise EarlError("repeats, batch_size, prompt_len, new_tokens, prompts and traces must all be >= 1")
    if num_threads:
        torch.set_num_threads(num_threads)
    backbone, layout, _ = build_bench_model(size, 64, seed)
    V, eos, pad = backbone.config.vocab_size, layout.ids.eos, layout.ids.pad
    ids = torch.randint(layout.vocab.image_offset, V, (batch_size, prompt_len), generator=torch.Generator().manual_seed(seed))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "position_ids": torch.arange(prompt_len)[None].expand(batch_size, -1)}
    rows = [ids[i % batch_size].tolist() for i in range(prompts)]

    def hf_greedy():
        out = backbone.generate(**batch, max_new_tokens=new_tokens, do_sample=False, top_k=None, eos_token_id=eos,
                                pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
        return out.sequences[:, prompt_len:]

    def sampler(decoder):
        return lambda: sample_traces_watching(backbone, rows, traces, 1.0, new_tokens, eos, pad,
                                              torch.Generator().manual_seed(seed), decoder=decoder)[0]

    calls = {"generate_greedy": hf_greedy,
             "lean_greedy": lambda: greedy_text(backbone, batch, new_tokens, eos, pad, decoder="lean")[0],
             "hf_sampler": sampler("hf"), "lean_sampler": sampler("lean")}
    busy = cpu_busy_fraction()
    times, kept = _timed_round_robin(calls, lambda out: out, repeats)
    outputs = {name: outs[-1] for name, outs in kept.items()}
    n_tokens = {"generate_greedy": outputs["generate_greedy"].numel(),  # rows x steps (pad after eos included)
                "hf_sampler": sum(len(t) for t in outputs["hf_sampler"])}
    n_tokens["lean_greedy"], n_tokens["lean_sampler"] = n_tokens["generate_greedy"], n_tokens["hf_sampler"]
    res = {name: {"seconds": statistics.median(times[name]), "seconds_all": times[name], "tokens": n_tokens[name]}
           for name in calls}
    return {"config": {"size": size, "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
                       "prompts": prompts, "traces": traces, "repeats": repeats, "seed": seed},
            "machine": {**machine_info(), "cpu_busy_before": busy}, "results": res,
            "same_output": {"greedy": torch.equal(outputs["generate_greedy"], outputs["lean_greedy"]),
                            "sampler": outputs["hf_sampler"] == outputs["lean_sampler"]},
            "speedup": {"greedy": res["generate_greedy"]["seconds"] / res["lean_greedy"]["seconds"],
                        "sampler": res["hf_sampler"]["seconds"] / res["lean_sampler"]["seconds"]}}


def format_text_table(result: dict) -> str:
    c, r, m = result["config"], result["results"], result["machine"]
    busy = m["cpu_busy_before"]
    lines = [f"{c['size']}, random weights, {c['prompt_len']}-token prompts, up to {c['new_tokens']} new tokens, "
             f"median of {c['repeats']}", "",
             "| loop | rows | Hugging Face s | earl.lean s | speedup | same tokens |", "|---|---:|---:|---:|---:|---|",
             f"| greedy verdicts | {c['batch_size']} | {r['generate_greedy']['seconds']:.2f} (generate) "
             f"| {r['lean_greedy']['seconds']:.2f} | {result['speedup']['greedy']:.2f}x | {result['same_output']['greedy']} |",
             f"| GCPO sampler | {c['prompts'] * c['traces']} | {r['hf_sampler']['seconds']:.2f} "
             f"| {r['lean_sampler']['seconds']:.2f} | {result['speedup']['sampler']:.2f}x "
             f"| {result['same_output']['sampler']} |", "",
             f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads; CPU busy before the run: "
             + ("n/a" if busy is None else f"{100 * busy:.0f}%")]
    return "\n".join(lines)
