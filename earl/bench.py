"""`earl bench generate`: earl's sampler against `transformers.generate` doing the same job.

Both sample an h x w code grid per prompt from the *same* random-weight editor, at temperature 1
with classifier-free guidance, and both must return well-formed grids (checked with
`layout.parse_image` on every output, outside the timed region) so the comparison is of equal work:

    earl          sample_edits: cond + uncond rows in one batched forward per step, sampling on
                  the image-id slice, a row's last code and its <eol> fed in one forward
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
import time

import torch

from earl.errors import EarlError
from earl.generate import SamplingConfig, sample_edits
from earl.layout import EditLayout

# A few instructions of different lengths, so the conditional prompts need left padding.
INSTRUCTIONS = [
    "make the red circle blue",
    "change the square to green",
    "remove the small triangle",
    "move the large blue square one cell to the left and make it red",
]
METHODS = ("earl_cfg", "transformers_cfg", "earl_nocfg")


def build_bench_editor(size: str, image_size: int, seed: int = 0):
    """A random-weight editor: untrained x8 VQ tokenizer (1000 FSQ codes), word tokenizer over INSTRUCTIONS."""
    from earl.model import UnifiedEditor
    from earl.text import build_word_tokenizer
    from tokenizer import VQConfig, VQTokenizer

    torch.manual_seed(seed)
    vq = VQTokenizer(VQConfig()).eval()
    text = build_word_tokenizer(INSTRUCTIONS)
    return UnifiedEditor.build(size, vq, text, image_size=image_size, seed=seed).eval()


# ---- the two samplers, each returning (N, T) completions that start with the image header --------
def run_earl(backbone, layout: EditLayout, instructions: list[str], sources: torch.Tensor,
             guidance_scale: float, generator: torch.Generator | None, temperature: float = 1.0) -> torch.Tensor:
    cfg = SamplingConfig(guidance_scale=guidance_scale, temperature=temperature)
    return sample_edits(backbone, layout, instructions, sources, cfg, generator=generator).completions


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
                   seed: int) -> dict:
    """Time the three methods on one batch of B prompts (same sources and instructions for each)."""
    sources = torch.randint(0, layout.vocab.codebook_size, (B, h, w), generator=torch.Generator().manual_seed(seed))
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(B)]
    calls = {
        "earl_cfg": lambda: run_earl(backbone, layout, instructions, sources, guidance_scale,
                                     torch.Generator().manual_seed(seed)),
        "transformers_cfg": lambda: run_transformers(backbone, layout, instructions, sources, guidance_scale, seed),
        "earl_nocfg": lambda: run_earl(backbone, layout, instructions, sources, 1.0, torch.Generator().manual_seed(seed)),
    }
    row = {"batch_size": B}
    times, n_checked = _timed_round_robin(calls, lambda out: len(parse_grids(layout, out, h, w)), repeats)
    for name in METHODS:
        sec = statistics.median(times[name])
        row[name] = {"seconds": sec, "seconds_all": times[name], "tokens_per_s": B * h * w / sec,
                     "ms_per_image": 1000 * sec / B, "well_formed": n_checked[name] == [B] * (repeats + 1)}
    row["speedup_cfg"] = row["earl_cfg"]["tokens_per_s"] / row["transformers_cfg"]["tokens_per_s"]
    return row


def bench_generate(size: str = "shapes-tiny", image_size: int = 64, batch_sizes=(1, 16), guidance_scale: float = 3.0,
                   repeats: int = 3, seed: int = 0, num_threads: int | None = None) -> dict:
    """Image tokens/s of earl (with and without CFG) and of `transformers.generate` (with CFG)."""
    if repeats < 1:
        raise EarlError(f"repeats must be >= 1, got {repeats}")
    if guidance_scale == 1.0:
        raise EarlError("guidance_scale must differ from 1: the benchmark compares CFG implementations")
    if num_threads:
        torch.set_num_threads(num_threads)
    editor = build_bench_editor(size, image_size, seed)
    backbone, layout = editor.backbone, editor.layout
    h, w = editor.config.grid
    load_before, busy_before = os.getloadavg(), cpu_busy_fraction()
    rows = [_measure_batch(backbone, layout, B, h, w, guidance_scale, repeats, seed) for B in batch_sizes]
    return {
        "config": {"size": size, "image_size": image_size, "grid": [h, w], "codebook_size": layout.vocab.codebook_size,
                   "backbone_params": sum(p.numel() for p in backbone.parameters()),
                   "guidance_scale": guidance_scale, "temperature": 1.0, "repeats": repeats, "seed": seed},
        "machine": {**machine_info(), "cpu_busy_before": busy_before, "loadavg_before": list(load_before),
                    "loadavg_after": list(os.getloadavg())},
        "results": rows,
    }


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"{c['size']}, {c['image_size']} px ({c['grid'][0]}x{c['grid'][1]} codes), guidance {c['guidance_scale']}, "
             f"median of {c['repeats']}",
             "",
             "| batch | earl CFG tok/s | transformers CFG tok/s | earl / transformers | earl CFG ms/img "
             "| transformers CFG ms/img | earl no-CFG tok/s | earl no-CFG ms/img |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        e, t, n = r["earl_cfg"], r["transformers_cfg"], r["earl_nocfg"]
        lines.append(f"| {r['batch_size']} | {e['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | {r['speedup_cfg']:.2f}x "
                     f"| {e['ms_per_image']:.1f} | {t['ms_per_image']:.1f} | {n['tokens_per_s']:.0f} "
                     f"| {n['ms_per_image']:.1f} |")
    m = result["machine"]
    busy = m["cpu_busy_before"]
    lines += ["", f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads; CPU busy before the run: "
              f"{'n/a' if busy is None else f'{100 * busy:.0f}%'}; load average before/after (1 min, includes this "
              f"run): {m['loadavg_before'][0]:.2f} / {m['loadavg_after'][0]:.2f}"]
    if busy is not None and busy > 0.1:
        lines.append("warning: other processes were using the CPU; small-op timings degrade badly under contention "
                     "(torch threads wait for descheduled peers), re-run on an idle machine")
    return "\n".join(lines)
