"""`earl demo`: the quickstart job, end to end at reduced size, with progress throughout.

    1. edit a few sample images with the bundled checkpoint (if this checkout has one)
    2. generate ShapesEdit data (simple split: a training set and the fixed test set)
    3. train the VQ image tokenizer (recipes/shapes/tokenizer.yaml, a fifth of its steps at half its batch) and print its report
    4. SFT a tiny editor on the codes (recipes/shapes/sft.yaml, 140 of its steps at half its batch)
    5. evaluate it with the oracle: table with 95% CIs, image grid (source | target | output)

The sizes keep it inside the 15-minute budget of the quickstart on the slowest 2-core machine seen
(README gives the measured time). Machines of that kind differ: a tokenizer step of the recipe
took 0.26-0.32 s on an AVX2-only EPYC and an SFT step 2.8-4.6 s on the same machine an hour
apart, so the full batch with 200 SFT steps took 15.4 min there.

Every stage writes under `--out` and is skipped when its result is already there, so an
interrupted demo continues where it stopped. `--fast` is a smoke-sized run (about a minute).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from earl.config import load_config
from earl.evaluate import run_shapes_eval
from earl.io import save_png
from earl.pipeline import EditPipeline, default_checkpoint
from earl.shapes.dataset import write_dataset
from earl.shapes.edits import make_sample
from earl.shapes.judge import format_table
from earl.shapes.render import render
from earl.train.sft import SFTRecipe, train_sft
from earl.train.tokenizer import TokenizerRecipe, format_report, train_tokenizer
from earl.viz import image_grid

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "shapes"


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def run_demo(out: Path, fast: bool = False) -> dict:
    out = Path(out)
    t_all = time.time()
    n_train, n_test = (400, 32) if fast else (6000, 100)

    _stage("1/5 edit sample images with the bundled checkpoint")
    if (default_checkpoint() / "editor.json").is_file():
        _edit_samples(out / "bundled_edits")
    else:
        print(f"no bundled checkpoint at {default_checkpoint()}; skipping (train one with the steps below)")

    _stage("2/5 ShapesEdit data")
    data = out / "data"
    for part, n in (("train", n_train), ("test", n_test)):
        if not (data / f"simple-{part}" / "meta.json").is_file():
            write_dataset(data / f"simple-{part}", split="simple", n=n, seed=0, part=part)
        print(f"simple/{part}: {n} samples in {data / f'simple-{part}'}")

    _stage("3/5 VQ tokenizer")
    tok_recipe = RECIPES / ("tokenizer_tiny.yaml" if fast else "tokenizer.yaml")
    tok_overrides = [f"out_dir={out / 'tokenizer'}"]
    if not fast:  # a fifth of the recipe's steps (its last third decoder-only, as in the recipe), at half its batch
        tok_overrides += ["train.steps=1200", "train.decoder_only_steps=400", "train.batch_size=16"]
    tok_cfg = load_config(TokenizerRecipe, tok_recipe, tok_overrides)
    tok_dir = out / "tokenizer" / "tokenizer"
    report = train_tokenizer(tok_cfg, resume=True)
    print(format_report(report))

    _stage("4/5 SFT of a tiny editor")
    sft_out = out / "sft"
    if not (sft_out / "model" / "editor.json").is_file():
        overrides = [f"out_dir={sft_out}", f"model.image_tokenizer={tok_dir}",
                     f"data.train=[{data / 'simple-train'}]", f"data.eval={data / 'simple-test'}",
                     f"data.cache_dir={out / 'cache'}", "data.oracle_eval_samples=32"]
        overrides += (["model.size=shapes-test", "run.steps=40", "run.eval_every=40", "run.save_every=40",
                       "optim.warmup_steps=5"] if fast else
                      ["run.steps=140", "run.batch_size=16", "run.eval_every=140", "run.save_every=70",
                       "optim.warmup_steps=15"])
        train_sft(load_config(SFTRecipe, RECIPES / "sft.yaml", overrides), resume=True)

    _stage("5/5 evaluation with the oracle")
    results = run_shapes_eval(sft_out / "model", data / "simple-test", out / "eval")
    print(format_table(results))
    print(f"\nimage grid: {out / 'eval' / 'grid.png'}   results: {out / 'eval' / 'results.json'}")
    print(f"demo finished in {time.time() - t_all:.0f} s")
    return results


def _edit_samples(out: Path) -> None:
    pipe = EditPipeline.from_pretrained()
    rng = random.Random(7)
    rows = []
    for i in range(4):
        s = make_sample(rng, "simple")
        edited = pipe(render(s.source_scene), s.instruction).images[0]
        print(f"  {i}: {s.instruction}")
        rows.append([render(s.source_scene), render(s.target_scene), edited])
    save_png(image_grid(rows, col_labels=["source", "target", "output"], scale=3), out / "grid.png")
    print(f"grid of bundled-checkpoint edits: {out / 'grid.png'}")
