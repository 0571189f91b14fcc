"""Sequential against speculative Jacobi greedy decoding on the bundled editor, in one run.

    python recipes/shapes/jacobi_bench.py [--samples 50] [--batch 16] [--windows 4,8] [--decoder auto]

For the fixed simple and complex ShapesEdit test sets (their first `--samples` samples): forward passes,
forwards spent on the image grid, codes per image forward, wall time, and whether every image equals
the sequential one. The schedules run batch by batch in turn, so load on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from earl.generate import SamplingConfig, sample_edits
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
    args = ap.parse_args()
    editor = UnifiedEditor.from_pretrained(EDITOR).eval()
    h, w = editor.config.grid
    greedy = SamplingConfig(temperature=0.0)
    runs = [("sequential", None)] + [("jacobi", int(x)) for x in args.windows.split(",")]
    print(f"editor {EDITOR.name}, grid {h}x{w}, batch {args.batch}, decoder {args.decoder}, "
          f"torch threads {torch.get_num_threads()}")
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
                t0 = time.perf_counter()
                out = sample_edits(editor.backbone, editor.layout, ins, codes, greedy, decoder=args.decoder,
                                   schedule=schedule, window=window)
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
        for (schedule, window), st in stats.items():
            name = schedule if window is None else f"jacobi w{window}"
            batches = -(-len(samples) // args.batch)
            print(f"{name:<12}{st['passes']:>8}{st['passes'] / seq['passes']:>7.2f}{st['image']:>10}"
                  f"{batches * h * w / st['image']:>11.2f}{st['seconds']:>8.2f}{st['seconds'] / seq['seconds']:>7.2f}"
                  f"{1000 * st['seconds'] / len(samples):>8.1f}{st['same']:>5}/{len(samples)}")


if __name__ == "__main__":
    main()
