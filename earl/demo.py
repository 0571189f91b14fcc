"""`earl demo`: the quickstart job, end to end at reduced size, with progress throughout.

    1. edit a few sample images with the bundled editor
    2-4. the pipeline from scratch, short: ShapesEdit data -> VQ image tokenizer (a fifth of
       recipes/shapes/tokenizer.yaml's steps) -> SFT of a tiny editor (140 steps; far from the bundled
       editor's 1,500) -> oracle report. It shows the stages, not a usable editor.
    5. GRPO from the bundled editor on simple + complex prompts, the exact oracle as verifier (the
       settings of recipes/shapes/study_complex.yaml's EARL arm: 40 steps of 8 prompts x 8 samples)
    6. complex edits three ways, on ShapesEdit's fixed complex test set: the bundled editor in one shot,
       the editor after GRPO, and the agent pipeline (the bundled decomposer writes a plan of simple steps
       that the editor carries out): one table (success with its 95% interval, paired differences, editor
       calls per edit) and one image grid.

README gives the measured time. Every stage writes under `--out` and is skipped when its result is
already there, so an interrupted demo continues where it stopped. `--fast` is a smoke-sized run.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from earl.agents.build import AgentOptions
from earl.agents.evaluate import compare_runs, format_comparison, run_agent_eval
from earl.agents.pipeline import build_agent_pipeline
from earl.config import load_config
from earl.evaluate import run_shapes_eval
from earl.io import atomic_write_text, load_image, save_png
from earl.pipeline import EditPipeline, default_checkpoint
from earl.shapes.dataset import load_dataset, write_dataset
from earl.shapes.edits import make_sample
from earl.shapes.judge import format_table
from earl.shapes.render import render
from earl.train.grpo import GRPORecipe, train_grpo
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
    bundled = (default_checkpoint() / "editor.json").is_file()

    _stage("1/6 edit sample images with the bundled editor")
    if bundled:
        _edit_samples(out / "bundled_edits")
    else:
        print(f"no bundled checkpoint at {default_checkpoint()}; skipping (train one with the steps below)")

    _stage("2/6 the pipeline from scratch: ShapesEdit data")
    data = out / "data"
    for part, n in (("train", n_train), ("test", n_test)):
        if not (data / f"simple-{part}" / "meta.json").is_file():
            write_dataset(data / f"simple-{part}", split="simple", n=n, seed=0, part=part)
        print(f"simple/{part}: {n} samples in {data / f'simple-{part}'}")

    _stage("3/6 the pipeline from scratch: a VQ image tokenizer")
    tok_recipe = RECIPES / ("tokenizer_tiny.yaml" if fast else "tokenizer.yaml")
    tok_overrides = [f"out_dir={out / 'tokenizer'}"]
    if not fast:  # a fifth of the recipe's steps (its last third decoder-only, as in the recipe), at half its batch
        tok_overrides += ["run.steps=1200", "train.decoder_only_steps=400", "run.batch_size=16"]
    tok_cfg = load_config(TokenizerRecipe, tok_recipe, tok_overrides)
    tok_dir = out / "tokenizer" / "tokenizer"
    report = train_tokenizer(tok_cfg, resume=True)
    print(format_report(report))

    _stage("4/6 the pipeline from scratch: SFT of a tiny editor, judged by the oracle")
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
    results = run_shapes_eval(sft_out / "model", data / "simple-test", out / "eval")
    print(format_table(results))
    print(f"image grid: {out / 'eval' / 'grid.png'}. A 140-step editor from scratch is far from the bundled "
          "one (1,500 steps, 86.5% of simple edits); what the project is for comes next.")
    if not bundled:
        print(f"demo finished in {time.time() - t_all:.0f} s (no bundled editor: the complex-edit stages skipped)")
        return {"from_scratch": results}

    complex_test = _complex_edits(out, data, fast)
    print(f"demo finished in {time.time() - t_all:.0f} s")
    return {"from_scratch": results, "complex": complex_test}


def _complex_edits(out: Path, data: Path, fast: bool) -> dict:
    """Stages 5 and 6: GRPO from the bundled editor, then the editor, the GRPO-trained editor and the agent
    pipeline on the same complex test edits, in one table and one grid."""
    _stage("5/6 GRPO from the bundled editor, the exact oracle as verifier")
    grpo_out = out / "grpo"
    n_prompts = 200 if not fast else 16
    test = data / f"complex-test-{n_prompts}"
    if not (test / "meta.json").is_file():  # ShapesEdit's fixed complex test set (shapes:complex:test:200)
        write_dataset(test, split="complex", n=n_prompts, seed=0, part="test")
    if not (grpo_out / "model" / "editor.json").is_file():
        steps, n_train = (2, 64) if fast else (40, 2000)
        overrides = [f"out_dir={grpo_out}", f"init_from={default_checkpoint()}", f"data.cache_dir={out / 'cache'}",
                     f"data.train=[shapes:simple:train:{n_train}:0,shapes:complex:train:{n_train}:0]",
                     f"data.eval={test}", "data.oracle_eval_samples=32", f"run.steps={steps}",
                     f"run.eval_every={steps}", f"run.save_every={max(1, steps // 4)}", "optim.lr=5.0e-5",
                     "optim.min_lr=5.0e-5", "grpo.sampling.temperature=1.5", "grpo.sample_grid_every=0"]
        if fast:
            overrides += ["grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.minibatch_size=8"]
        train_grpo(load_config(GRPORecipe, RECIPES / "grpo.yaml", overrides), resume=True)

    _stage("6/6 complex edits three ways: the editor in one shot, after GRPO, and through the agent pipeline")
    runs = {"bundled editor": out / "complex_editor", "editor after GRPO": out / "complex_grpo",
            "agent pipeline": out / "complex_agent"}
    for label, model in (("bundled editor", default_checkpoint()), ("editor after GRPO", grpo_out / "model")):
        if not (runs[label] / "results.json").is_file():
            print(f"{label}: {n_prompts} complex edits")
            run_shapes_eval(model, test, runs[label])
    if not (runs["agent pipeline"] / "results.json").is_file():
        print(f"agent pipeline: {n_prompts} complex edits (decomposer -> plan -> one editor call per step)")
        run_agent_eval(build_agent_pipeline(None, None, AgentOptions()), test, runs["agent pipeline"])
    comparison = compare_runs(runs, base="bundled editor")
    table = format_comparison(comparison)
    atomic_write_text(out / "complex_table.md", table + "\n")
    print(table)
    ds = load_dataset(test)
    k = 6 if not fast else 2
    rows = [[ds[i]["source_image"], ds[i]["target_image"],
             *(load_image(d / "images" / f"{ds[i]['id']}.png") for d in runs.values())] for i in range(k)]
    for i in range(k):
        print(f"  row {i}: {ds[i]['instruction']}")
    save_png(image_grid(rows, col_labels=["source", "target", "editor", "+GRPO", "agent"], scale=3),
             out / "complex_grid.png")
    print(f"\ntable: {out / 'complex_table.md'}   grid: {out / 'complex_grid.png'}\n"
          "The three-seed study of these arms, with the reasoning reward model and more: "
          "earl study recipes/shapes/study_complex.yaml (docs/RESULTS.md)")
    return comparison


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
