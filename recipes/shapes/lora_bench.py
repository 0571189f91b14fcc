"""LoRA against full fine-tuning on a ~100M-parameter editor: trainable parameters, peak memory and step time
of an SFT step and a GRPO update, in one run.

    OMP_NUM_THREADS=1 python recipes/shapes/lora_bench.py [--steps 3] [--rank 16] [--json out.json]

Each arm (sft-full, sft-lora, grpo-full, grpo-lora) runs in a fresh process of its own, so that its peak
memory is its own: peak RSS (`ru_maxrss`) of that process, and the part of it above the RSS measured once
the model, optimiser and accelerator are set up (what training adds: gradients, AdamW states, activations,
a KL reference). Step
time: the median of `--steps` timed steps after one untimed step.

- SFT step: teacher-forced loss (`earl.train.lm.lm_loss`) on a batch of 8 edits, backward, AdamW step.
- GRPO update: `earl.train.grpo._update` as training runs it, on one rollout of 2 prompts x 4 samples
  sampled once from the start model: the reference's log-probs (beta 0.04: full fine-tuning keeps a
  frozen copy; LoRA the base with the adapters off), the policy's, the clipped loss with KL, backward and
  AdamW. Sampling the rollout is not timed (the same for both arms but for the adapters' extra matmuls).

The editor: the Llama backbone of `UnifiedEditor.build` at hidden 768, 12 layers, MLP 2560 (about 96M
parameters), earl's small test VQ tokenizer (untrained: only shapes matter here), 32x32 images (4x4 codes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ARMS = ("sft-full", "sft-lora", "grpo-full", "grpo-lora")
SIZE = dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4)
WORDS = ["make the red circle blue", "change the square to green", "remove the small triangle", "add a circle"]


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_editor():
    from earl.model import BACKBONE_SIZES, UnifiedEditor
    from earl.text import build_word_tokenizer
    from tokenizer import VQConfig, VQTokenizer

    BACKBONE_SIZES.setdefault("bench-100m", SIZE)
    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig(channels=16, channel_mult=(1, 2, 2, 2), latent_dim=4, norm_groups=4, quantizer="fsq",
                              fsq_levels=(4, 4, 4))).eval()
    return UnifiedEditor.build("bench-100m", vq, build_word_tokenizer(WORDS), image_size=32, seed=0)


def run_arm(arm: str, steps: int, rank: int) -> dict:
    """One arm in this process; returns its figures."""
    from earl.train.accelerator import make_accelerator
    from earl.train.lm import lm_loss
    from earl.train.lora import apply_lora, reference_model
    from earl.train.optim import make_optimizer, make_scheduler
    from earl.train.sections import LoraSection, OptimSection, RunSection

    torch.manual_seed(0)
    editor = build_editor()
    total = sum(p.numel() for p in editor.backbone.parameters())
    kind, mode = arm.split("-")
    out = Path(tempfile.mkdtemp(prefix="lora_bench_"))
    rollout = adv = None
    if kind == "grpo":  # sampled before LoRA wraps the model: the same rollout for both arms
        from earl.generate import SamplingConfig, sample_edits
        from earl.rl.logprobs import rollout_from_generation

        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 64, (8, 4, 4), generator=g)
        ins = [WORDS[i % 2] for i in range(8)]
        gen = sample_edits(editor.backbone.eval(), editor.layout, ins, codes, SamplingConfig(temperature=1.0),
                           generator=g)
        rollout = rollout_from_generation(ins, codes, gen, editor.layout)
        adv = torch.randn(8, generator=g)
    if mode == "lora":
        editor.backbone = apply_lora(editor.backbone, LoraSection(r=rank, alpha=2.0 * rank))
    model = editor.backbone
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim = OptimSection(lr=1e-4, min_lr=1e-4, warmup_steps=0, weight_decay=0.0)
    accelerator = make_accelerator(RunSection(steps=steps + 1, grad_accum=1), out, optim)
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim, steps + 1)

    if kind == "sft":
        g = torch.Generator().manual_seed(1)
        batch = editor.layout.collate([editor.layout.example(WORDS[i % 4], torch.randint(0, 64, (4, 4), generator=g),
                                                             torch.randint(0, 64, (4, 4), generator=g))
                                       for i in range(8)])
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        after_build = rss_mib()

        def step():
            model.train()
            loss = lm_loss(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        from earl.train.grpo import GRPORecipe, GRPOSection, _update

        cfg = GRPORecipe(out_dir=str(out), init_from=str(out),
                         grpo=GRPOSection(group_size=4, prompts_per_step=2, minibatch_size=8, beta=0.04))
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        after_build = rss_mib()
        ref = reference_model(accelerator.unwrap_model(model), cfg.grpo.beta)  # as the trainer: before any update
        row_ok = torch.ones(8, dtype=torch.bool)

        def step():
            _update(cfg, accelerator, model, optimizer, scheduler, editor, ref, rollout, adv, row_ok)

    step()  # warm-up, untimed
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mib()
    return {"arm": arm, "parameters": total, "trainable": trainable, "step_s": statistics.median(times),
            "steps_s": times, "rss_after_build_mib": after_build, "peak_rss_mib": peak,
            "training_rss_mib": peak - after_build}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per arm (after one untimed)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank), default targets")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.steps, args.rank)))
        return
    rows = {}
    for arm in ARMS:
        done = subprocess.run([sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--rank",
                               str(args.rank)], capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{arm} failed:\n{done.stderr[-3000:]}")
        rows[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, LoRA r={args.rank}, "
          f"{args.steps} timed steps per arm")
    print("| step | arm | trainable params | peak RSS MiB | RSS added by training MiB | step s |")
    print("|---|---|---|---|---|---|")
    for arm, r in rows.items():
        print(f"| {arm.split('-')[0]} | {arm.split('-')[1]} | {r['trainable'] / 1e6:.2f}M of {r['parameters'] / 1e6:.1f}M "
              f"| {r['peak_rss_mib']:.0f} | {r['training_rss_mib']:.0f} | {r['step_s']:.2f} |")
    for kind in ("sft", "grpo"):
        full, lora = rows[f"{kind}-full"], rows[f"{kind}-lora"]
        print(f"{kind} LoRA / full: trainable {lora['trainable'] / full['trainable']:.4f}, peak RSS "
              f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}, RSS added by training "
              f"{lora['training_rss_mib'] / full['training_rss_mib']:.2f}, step time {lora['step_s'] / full['step_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
