"""Sequential against speculative Jacobi greedy decoding on the bundled editor, in one run.

    python recipes/shapes/jacobi_bench.py [--samples 50] [--batch 16] [--windows 4,8] [--decoder auto]
                                          [--device cpu] [--out results.json]

For the fixed simple and complex ShapesEdit test sets (their first `--samples` samples): forward passes,
forwards spent on the image grid, codes per image forward, wall time, and whether every image equals
the sequential one. The schedules run batch by batch in turn, so load on the machine hits them alike.
Exits with status 1 when a Jacobi image differs from the sequential one (the greedy identity check
`recipes/gpu/checks.sh` runs on a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from earl.generate import SamplingConfig, sample_edits
from earl.generation_bench import machine_info
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render

EDITOR = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes-editor"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--windows", default="4,8")
    ap.add_argument("--decoder", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()
    editor = UnifiedEditor.from_pretrained(EDITOR, device=args.device).eval()
    h, w = editor.config.grid
    greedy = SamplingConfig(temperature=0.0)
    runs = [("sequential", None)] + [("jacobi", int(x)) for x in args.windows.split(",")]
    print(f"editor {EDITOR.name}, grid {h}x{w}, batch {args.batch}, decoder {args.decoder}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    report = {"config": {k: getattr(args, k) for k in ("samples", "batch", "windows", "decoder", "device")},
              "machine": machine_info(), "sets": {}}
    if args.device.startswith("cuda"):
        report["machine"]["gpu"] = torch.cuda.get_device_name(args.device)
    for split in ("simple", "complex"):
        samples = list(itertools.islice(generate_samples(split, args.samples, seed=0, part="test"), args.samples))
        stats = {r: dict(passes=0, image=0, seconds=0.0, same=0) for r in runs}
        for i in range(0, len(samples), args.batch):
            part = samples[i : i + args.batch]
            codes = editor.encode_images([editor.preprocess(render(s.source_scene))[0] for s in part])
            ins = [s.instruction for s in part]
            if i == 0:  # warm-up, untimed
                sample_edits(editor.backbone, editor.layout, ins, codes, greedy, decoder=args.decoder)
            ref = None
            for schedule, window in runs:
                sync()
                t0 = time.perf_counter()
                out = sample_edits(editor.backbone, editor.layout, ins, codes, greedy, decoder=args.decoder,
                                   schedule=schedule, window=window)
                sync()
                st = stats[(schedule, window)]
                st["seconds"] += time.perf_counter() - t0
                st["passes"] += out.forward_passes
                st["image"] += out.forward_passes - 2  # prefill and header are not the grid's
                ref = out.codes if ref is None else ref
                st["same"] += int((out.codes == ref).flatten(1).all(1).sum())
        seq = stats[runs[0]]
        print(f"\n{split}: {len(samples)} samples")
        print(f"{'schedule':<12}{'passes':>8}{'ratio':>7}{'grid fwd':>10}{'codes/fwd':>11}{'wall s':>8}{'ratio':>7}"
              f"{'ms/img':>8}{'same':>7}")
        batches = -(-len(samples) // args.batch)
        report["sets"][split] = {}
        for (schedule, window), st in stats.items():
            name = schedule if window is None else f"jacobi w{window}"
            report["sets"][split][name] = {**st, "samples": len(samples), "passes_vs_sequential": st["passes"] / seq["passes"],
                                           "codes_per_grid_forward": batches * h * w / st["image"],
                                           "time_vs_sequential": st["seconds"] / seq["seconds"]}
            print(f"{name:<12}{st['passes']:>8}{st['passes'] / seq['passes']:>7.2f}{st['image']:>10}"
                  f"{batches * h * w / st['image']:>11.2f}{st['seconds']:>8.2f}{st['seconds'] / seq['seconds']:>7.2f}"
                  f"{1000 * st['seconds'] / len(samples):>8.1f}{st['same']:>5}/{len(samples)}")

    if args.out:
        atomic_write_json(args.out, report)
    differ = {f"{split} {name}": r["samples"] - r["same"] for split, rows in report["sets"].items()
              for name, r in rows.items() if r["same"] != r["samples"]}
    if differ:
        print(f"images differing from the sequential ones: {json.dumps(differ)}")
        sys.exit(1)


def sync() -> None:
    """Wait for the GPU's queued work, so that wall time is the work's (a no-op on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
