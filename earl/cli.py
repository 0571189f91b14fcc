"""The `earl` command: one subcommand per job, each a thin wrapper over a library function.

User errors (`EarlError`) print one line and exit with status 2; anything else is a bug and
keeps its traceback. Heavy imports happen inside each handler so `earl --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from earl.errors import EarlError


def _cmd_data_shapes(args) -> None:
    from earl.shapes.dataset import write_dataset

    out = write_dataset(args.out, split=args.split, n=args.n, seed=args.seed, part=args.part, image_size=args.size)
    print(f"wrote {args.n} {args.split}/{args.part} samples to {out}")


def _cmd_data_tokenize(args) -> None:
    from earl.config import load_config
    from earl.model import UnifiedEditor
    from earl.records import RecordSpec
    from earl.shards import tokenize_dataset

    spec = load_config(RecordSpec, args.spec, args.overrides)
    editor = UnifiedEditor.from_pretrained(args.model)
    m = tokenize_dataset(spec, editor, args.out, shard_size=args.shard_size, limit=args.limit)
    print(f"{args.out}: {m['records']} records in {len(m['shards'])} shards; {len(m['skipped'])} skipped "
          f"(reasons in {Path(args.out) / 'manifest.json'}). Train on it with data.train=[tokenized:{args.out}]")


def _cmd_data_rrm_traces(args) -> None:
    from earl.rrm.real_traces import TraceOptions, write_real_traces
    from earl.verify.chat import build_chat_backend

    def backend(url, model):
        return build_chat_backend("openai", base_url=url, model=model, timeout=args.timeout,
                                  max_connections=args.concurrency)

    verifier = backend(args.verifier_base_url, args.verifier_model)
    principles = (backend(args.principles_base_url, args.principles_model) if args.principles_base_url
                  else verifier)
    counts = write_real_traces(args.pairs, args.out, backend(args.writer_base_url, args.writer_model), verifier,
                               principles, args.principle_cache,
                               TraceOptions(n=args.n, temperature=args.temperature, retries=args.retries,
                                            concurrency=args.concurrency))
    print(f"{args.out}: {counts['written']} traces written, {counts['skipped_done']} already there, "
          f"{counts['failed']} failed (see {Path(args.out).with_suffix('.failed.jsonl')}; a re-run retries them) "
          f"of {counts['images']} images")


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="generate or prepare datasets").add_subparsers(dest="what", required=True)
    d = data.add_parser("shapes", help="write a ShapesEdit dataset (parquet, readable by datasets.load_dataset)")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--n", type=int, required=True, help="number of samples")
    d.add_argument("--split", choices=["simple", "complex"], default="simple")
    d.add_argument("--part", choices=["train", "test"], default="train",
                   help="test = the fixed test set of the split (its seed is reserved; --seed is ignored)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 4 × 8)")
    d.set_defaults(func=_cmd_data_shapes)

    dt = data.add_parser("tokenize", help="encode an edit dataset into shards of codes once (for training)")
    dt.add_argument("spec", help="dataset field spec YAML, e.g. recipes/data/magicbrush.yaml")
    dt.add_argument("overrides", nargs="*", help="key=value overrides of the spec, e.g. path=/data/MagicBrush")
    dt.add_argument("--model", required=True, help="the editor whose preprocessing and image tokenizer to use")
    dt.add_argument("--out", required=True, help="shard directory (resumable)")
    dt.add_argument("--shard-size", type=int, default=1000)
    dt.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")
    dt.set_defaults(func=_cmd_data_tokenize)

    drt = data.add_parser("rrm-traces", help="cold-start traces for a reward model on real edits (VLM writer + "
                                             "stronger VLM verifier, best-agreeing trace kept; resumable)")
    drt.add_argument("--pairs", required=True, help="pair file (jsonl: source, instruction, image_a, image_b, preferred)")
    drt.add_argument("--out", required=True, help="jsonl to append to (re-runs skip what is there)")
    drt.add_argument("--writer-base-url", required=True, help="OpenAI-compatible server of the trace-writing VLM")
    drt.add_argument("--writer-model", default=None)
    drt.add_argument("--verifier-base-url", required=True, help="server of the stronger VLM whose verdicts are the labels")
    drt.add_argument("--verifier-model", default=None)
    drt.add_argument("--principles-base-url", default=None, help="server for the 10 principles (default: the verifier)")
    drt.add_argument("--principles-model", default=None)
    drt.add_argument("--principle-cache", default="runs/principles")
    drt.add_argument("-n", type=int, default=4, help="candidate traces per image")
    drt.add_argument("--temperature", type=float, default=1.0)
    drt.add_argument("--retries", type=int, default=2)
    drt.add_argument("--concurrency", type=int, default=8)
    drt.add_argument("--timeout", type=float, default=120.0)
    drt.set_defaults(func=_cmd_data_rrm_traces)


def _cmd_judge_shapes(args) -> None:
    from earl.io import atomic_write_json
    from earl.shapes.judge import format_table, judge_folder

    results = judge_folder(args.data, args.images)
    atomic_write_json(args.out, results)
    print(format_table(results))
    print(f"results written to {args.out}")


def _add_judge_parser(sub) -> None:
    judge = sub.add_parser("judge", help="judge edited images").add_subparsers(dest="what", required=True)
    j = judge.add_parser("shapes", help="judge a folder of edited PNGs (one per sample id) with the ShapesEdit oracle")
    j.add_argument("--data", required=True, help="ShapesEdit dataset directory")
    j.add_argument("--images", required=True, help="directory of edited images named {id}.png")
    j.add_argument("--out", required=True, help="results.json to write")
    j.set_defaults(func=_cmd_judge_shapes)


# stage -> (module, recipe dataclass, train function, report formatter or None)
TRAIN_STAGES = {
    "tokenizer": ("earl.train.tokenizer", "TokenizerRecipe", "train_tokenizer", "format_report"),
    "sft": ("earl.train.sft", "SFTRecipe", "train_sft", None),
    "grpo": ("earl.train.grpo", "GRPORecipe", "train_grpo", None),
    "rrm-sft": ("earl.train.rrm", "RRMRecipe", "train_rrm_sft", None),  # the reasoning reward model's cold start
    "rrm-gcpo": ("earl.train.gcpo", "GCPORecipe", "train_rrm_gcpo", None),  # ... then GCPO on preference pairs
    "rm-scalar": ("earl.train.scalar_rm", "ScalarRecipe", "train_scalar_rm", None),  # the holistic Bradley-Terry baseline
    # the ImageEdit-R1 decomposition agent, with trl: SFT on ground-truth plans, then GRPO on plan rewards
    "decomposer-sft": ("earl.train.decomposer", "DecomposerSFTRecipe", "train_decomposer_sft", None),
    "decomposer-grpo": ("earl.train.decomposer", "DecomposerGRPORecipe", "train_decomposer_grpo", None),
    # ... and the same GRPO for a transformers chat VLM (Qwen2.5-VL) as the decomposer
    "decomposer-vlm-grpo": ("earl.train.vlm_decomposer", "VLMDecomposerGRPORecipe", "train_vlm_decomposer_grpo", None),
}


def _cmd_train(args) -> None:
    import importlib

    from earl.config import load_config

    module, recipe_cls, train_fn, fmt = TRAIN_STAGES[args.stage]
    mod = importlib.import_module(module)
    cfg = load_config(getattr(mod, recipe_cls), args.recipe, args.overrides)
    report = getattr(mod, train_fn)(cfg, resume=args.resume)
    print(getattr(mod, fmt)(report) if fmt else json.dumps(report, indent=2))


def _add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a model from a YAML recipe").add_subparsers(dest="what", required=True)
    for stage, (module, *_rest) in TRAIN_STAGES.items():
        t = train.add_parser(stage, help=f"train with {module}")
        t.add_argument("recipe", help=f"YAML recipe, e.g. recipes/shapes/{stage}.yaml")
        t.add_argument("overrides", nargs="*", help="key.sub=value overrides of recipe fields")
        t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
        t.set_defaults(func=_cmd_train, stage=stage)


def _check_image_out(value: str, flag: str = "--out") -> Path:
    """An output image path that can be written, checked before any model loads: not a directory,
    an image extension (`earl.io.IMAGE_FORMATS`), and a writable nearest existing parent."""
    import os

    from earl.io import IMAGE_FORMATS, image_format

    out = Path(value)
    if out.is_dir():
        raise EarlError(f"{flag} {value}: is a directory; give an image file, e.g. {out / 'edited.png'}")
    if image_format(out) is None:
        what = f"unknown image extension {out.suffix!r}" if out.suffix else "no image extension"
        raise EarlError(f"{flag} {value}: {what} (expected one of {', '.join(IMAGE_FORMATS)})")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EarlError(f"{flag} {value}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EarlError(f"{flag} {value}: {parent} is not writable")
    return out


def _sampling_args(p) -> None:
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)


def _cmd_edit(args) -> None:
    from earl.pipeline import EditPipeline

    out = _check_image_out(args.out)
    pipe = EditPipeline.from_pretrained(args.model)
    res = pipe(args.image, args.instruction, num_samples=args.num_samples, guidance_scale=args.guidance_scale,
               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
               truncate_instruction=args.truncate_instruction)
    from earl.io import save_image

    for i, im in enumerate(res.images):
        path = out if len(res.images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        try:
            save_image(im, path)
        except OSError as e:
            raise EarlError(f"--out {args.out}: cannot write {path} ({e.strerror or e})") from None
        print(f"wrote {path}")
    for t in res.thinking:
        if t is not None:
            print(f"thinking: {t}")


def _add_edit_parser(sub) -> None:
    e = sub.add_parser("edit", help="edit one image")
    e.add_argument("--model", default=None, help="editor directory (default: the bundled checkpoint)")
    e.add_argument("--image", required=True)
    e.add_argument("--instruction", required=True)
    e.add_argument("--out", required=True, help="output image, its format from the extension: .png, .jpg, .webp, ... "
                                                "(with several samples: out_0.png, out_1.png, ...)")
    _sampling_args(e)
    e.add_argument("--num-samples", type=int, default=1)
    e.add_argument("--top-k", type=int, default=0)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--truncate-instruction", action="store_true",
                   help="cut an instruction too long for the model to the longest prefix that fits (default: refuse it)")
    e.set_defaults(func=_cmd_edit)


def _agent_args(p) -> None:
    """Options of the agent pipeline (`earl agent edit`, `earl eval shapes --agent`)."""
    p.add_argument("--check", choices=["none", "oracle", "rrm"], default="none",
                   help="closed loop: verify each step (ShapesEdit oracle, or the reasoning reward model) and "
                        "resample a failing step")
    p.add_argument("--attempts", type=int, default=4, help="with --check: tries per step (best-of-k)")
    p.add_argument("--step-temperature", type=float, default=1.0, help="with --check: temperature of resampled steps")
    p.add_argument("--rrm", default="checkpoints/shapes-rrm-lenient", help="with --check rrm: the reward model")
    p.add_argument("--rrm-threshold", type=float, default=0.9, help="with --check rrm: E[points]/10 needed to pass")
    p.add_argument("--plan-votes", type=int, default=0, metavar="K",
                   help="self-consistency: also sample K plans and keep the one written most often (0: greedy plan)")
    p.add_argument("--plan-temperature", type=float, default=1.0, help="with --plan-votes: temperature of sampled plans")
    p.add_argument("--plans", type=int, default=1, metavar="M",
                   help="with --plan-votes and --plan-judge: carry out up to M candidate plans, most-written first, "
                        "until the judge passes the final image")
    p.add_argument("--plan-judge", choices=["oracle", "rrm"], default=None,
                   help="with --plans: judge of the final image against the whole instruction (ShapesEdit oracle "
                        "success, or the reasoning reward model's E[points]/10 >= --rrm-threshold)")
    p.add_argument("--sequencer", choices=["keep", "dependency"], default="keep")
    p.add_argument("--fallback", action="store_true",
                   help="when the plan fails, give the editor the instruction itself (the failure is still counted)")


def _agent_pipeline(decomposer: str | None, editor: str | None, args):
    from earl.agents.build import AgentOptions
    from earl.agents.pipeline import build_agent_pipeline

    try:
        options = AgentOptions(check=args.check, attempts=args.attempts, step_temperature=args.step_temperature,
                               rrm=args.rrm, rrm_threshold=args.rrm_threshold, plan_votes=args.plan_votes,
                               plan_temperature=args.plan_temperature, plans=args.plans, plan_judge=args.plan_judge,
                               sequencer=args.sequencer, fallback=args.fallback)
    except ValueError as e:
        raise EarlError(f"agent options: {e}") from None
    return build_agent_pipeline(decomposer, editor, options, seed=getattr(args, "seed", 0))


def _cmd_agent_edit(args) -> None:
    from earl.io import load_image, save_image
    from earl.viz import image_grid

    out = _check_image_out(args.out)
    image = load_image(args.image)
    pipe = _agent_pipeline(args.decomposer, args.model, args)
    res = pipe(image, args.instruction)
    if res.plan is not None:
        print("plan:")
        for i, rec in enumerate(res.steps, 1):
            verdict = "" if rec.passed is None else f"  [{'pass' if rec.passed else 'FAIL'} after {rec.attempts}]"
            print(f"  {i}. {rec.step.text()}  ->  {rec.instruction!r}{verdict}")
    if res.failure:
        print(f"failure: {res.failure}: {res.error}" + (" (the editor got the instruction itself)" if res.fallback else ""))
    save_image(res.images[0], out)
    print(f"wrote {out} ({res.editor_calls} editor calls)")
    if args.steps_dir:
        steps_dir = Path(args.steps_dir)
        steps_dir.mkdir(parents=True, exist_ok=True)
        frames = [image] + [rec.image for rec in res.steps if rec.image is not None]
        for i, frame in enumerate(frames):
            save_image(frame, steps_dir / f"step_{i}.png")
        save_image(image_grid([[f.resize(image.size) for f in frames]], scale=1), steps_dir / "strip.png")
        print(f"steps: {steps_dir}/step_*.png, strip: {steps_dir / 'strip.png'}")


def _cmd_agent_compare(args) -> None:
    from earl.agents.evaluate import compare_runs, format_comparison
    from earl.io import atomic_write_text

    runs = _named_paths(args.runs, "run", "LABEL=DIR or DIR (an `earl eval shapes` output directory)", name_optional=True)
    for d in runs.values():
        if not (Path(d) / "results.json").is_file():
            raise EarlError(f"{d}: no results.json (expected an `earl eval shapes` output directory)")
    table = format_comparison(compare_runs(runs, base=args.base))
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
        print(f"wrote {args.out}")


def _add_agent_parser(sub) -> None:
    ag = sub.add_parser("agent", help="multi-agent editing (decomposer -> sequencer -> editor)").add_subparsers(
        dest="what", required=True)
    ae = ag.add_parser("edit", help="edit one image through the agent pipeline; prints the plan")
    ae.add_argument("--image", required=True)
    ae.add_argument("--instruction", required=True)
    ae.add_argument("--out", required=True, help="the final image")
    ae.add_argument("--steps-dir", default=None, help="write each step's image and a strip of them here")
    ae.add_argument("--decomposer", default=None, help="decomposer directory (default: the bundled one)")
    ae.add_argument("--model", default=None, help="editor directory (default: the bundled editor)")
    ae.add_argument("--seed", type=int, default=0)
    _agent_args(ae)
    ae.set_defaults(func=_cmd_agent_edit)
    ac = ag.add_parser("compare", help="table of `earl eval shapes` runs on one test set, with paired differences")
    ac.add_argument("runs", nargs="+", metavar="[LABEL=]DIR")
    ac.add_argument("--base", default=None, help="the run every other is paired against (its label)")
    ac.add_argument("--out", default=None, help="also write the markdown table here")
    ac.set_defaults(func=_cmd_agent_compare)


def _cmd_eval_rrm(args) -> None:
    from earl.config import load_config
    from earl.io import atomic_write_json
    from earl.train.rrm import RRMRecipe, evaluate_saved_rrm

    cfg = load_config(RRMRecipe, args.recipe, args.overrides)
    metrics = {"model": args.model, "recipe": args.recipe, "overrides": args.overrides,
               **evaluate_saved_rrm(cfg, args.model)}
    if args.out:
        atomic_write_json(args.out, metrics)
    print(json.dumps(metrics, indent=2))


def _cmd_eval_shapes(args) -> None:
    from earl.evaluate import run_shapes_eval
    from earl.generate import SamplingConfig
    from earl.shapes.judge import format_table

    if args.agent is not None:
        from earl.agents.evaluate import format_agent, run_agent_eval

        if args.decoder != "auto":
            raise EarlError("--decoder applies to the editor's own evaluation; with --agent the editor decodes "
                            "with 'auto'")

        pipe = _agent_pipeline(args.agent or None, args.model, args)
        results = run_agent_eval(pipe, args.data, args.out, batch_size=args.batch_size)
        print(format_table(results))
        print(format_agent(results["agent"]))
        print(f"results: {Path(args.out) / 'results.json'}; image grid: {Path(args.out) / 'grid.png'}; "
              f"step strips: {Path(args.out) / 'steps'}")
        return
    sampling = SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature)
    from earl.pipeline import default_checkpoint

    model = args.model or str(default_checkpoint())
    results = run_shapes_eval(model, args.data, args.out, sampling, batch_size=args.batch_size, seed=args.seed,
                              decoder=args.decoder)
    print(format_table(results))
    print(f"results: {Path(args.out) / 'results.json'}; image grid: {Path(args.out) / 'grid.png'}")


def _named_paths(items: list[str] | None, flag: str, expected: str, name_optional: bool = False) -> dict[str, str]:
    """Repeated `NAME=PATH` arguments as a dict; with `name_optional` a bare PATH is named by its last
    component. A malformed item, or a name given twice, is an error naming the flag."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep and name_optional:
            name, path = Path(item).name, item
        if not name or not path:
            raise EarlError(f"{flag} {item!r}: expected {expected}")
        if name in out:
            raise EarlError(f"{flag} {item!r}: the name {name!r} is given twice (name each one: NAME=PATH)")
        out[name] = path
    return out


def _cmd_eval_rewardbench(args) -> None:
    from earl.rrm.rewardbench import format_table, parse_verifier_spec, run_pair_file_bench, run_rewardbench
    from earl.verify.base import build_verifier

    rrms = _named_paths(args.rrm, "--rrm", "NAME=DIR (a model written by `earl train rrm-sft`)")
    scalars = _named_paths(args.scalar, "--scalar", "NAME=DIR (a model written by `earl train rm-scalar`)")
    specs = _named_paths(args.verifier, "--verifier", "LABEL=NAME[,key=value...] (an earl.verify verifier)")
    verifiers = {}
    for label, spec in specs.items():
        name, options = parse_verifier_spec(spec)
        verifiers[label] = build_verifier(name, **options)
    if args.pairs and args.editreward_bench:
        raise EarlError("--pairs and --editreward-bench: give one of them")
    if args.pairs or args.editreward_bench:
        flag = "--pairs" if args.pairs else "--editreward-bench"
        if args.avg_k > 1 or args.expected_score or args.expected_points:
            raise EarlError("--avg-k, --expected-score and --expected-points apply to ShapesEdit's held-out pairs, "
                            f"not to {flag}")
        verifiers = {**{n: build_verifier("rrm", model_path=d, max_new_tokens=args.max_new_tokens)
                        for n, d in rrms.items()},
                     **{n: build_verifier("scalar", model_path=d) for n, d in scalars.items()}, **verifiers}
        if not verifiers:
            raise EarlError(f"{flag} needs at least one scorer: --rrm, --scalar or --verifier")
    if args.editreward_bench:
        _eval_editreward_bench(args, rrms, scalars, verifiers)
        return
    if args.pairs:
        res = run_pair_file_bench(args.pairs, verifiers, args.out, baselines=args.baseline)
    else:
        res = run_rewardbench(rrms, args.out, samples=args.samples, seed=args.seed,
                              image_tokenizer_dir=args.image_tokenizer, max_new_tokens=args.max_new_tokens,
                              avg_k=args.avg_k, scalars=scalars, verifiers=verifiers,
                              expected_score=args.expected_score, expected_points=args.expected_points,
                              baselines=args.baseline)
    print(format_table(res))


def _eval_editreward_bench(args, rrms: dict, scalars: dict, verifiers: dict) -> None:
    """EditScore's EditReward-Bench from a local copy (`earl.rrm.editreward_bench`); the local models'
    weights are fingerprinted so a rerun into the same --out reuses their results."""
    from earl.rrm.editreward_bench import format_editreward_table, model_source, run_editreward_bench

    if args.baseline:
        raise EarlError("--baseline applies to ShapesEdit's held-out pairs and --pairs files, not to --editreward-bench")
    sources = {**{n: model_source("rrm", d, max_new_tokens=args.max_new_tokens) for n, d in rrms.items()},
               **{n: model_source("scalar", d) for n, d in scalars.items()}}
    print(format_editreward_table(run_editreward_bench(args.editreward_bench, verifiers, args.out, sources=sources)))


def _judge_backend(args):
    """The judge for a benchmark run, or None with --no-judge (then only what is on disk is scored)."""
    if args.no_judge:
        return None
    from earl.verify.chat import build_chat_backend

    return build_chat_backend(args.judge, base_url=args.judge_base_url, model=args.judge_model,
                              model_path=args.judge_model_path, timeout=args.judge_timeout,
                              max_connections=args.concurrency)


def _edit_fn(args):
    """Edits from an earl editor directory, or None with --no-generate (score images already in OUT/images)."""
    if args.no_generate:
        return None
    if args.agent is not None:
        return _benchmark_agent(args)
    from earl.pipeline import EditPipeline

    pipe = EditPipeline.from_pretrained(args.model)
    return lambda image, instruction: pipe(image, instruction, guidance_scale=args.guidance_scale,
                                          temperature=args.temperature, seed=args.seed).images[0]


def _benchmark_agent(args):
    """The agent pipeline as a benchmark's editor: a chat VLM decomposer ('openai', from
    --decomposer-base-url / --decomposer-model or $EARL_DECOMPOSER_BASE_URL / $EARL_DECOMPOSER_MODEL) or an
    earl decomposer directory, in front of the --model editor. A failed plan falls back to the editor
    alone (the benchmark needs an image per item); how many did is logged. Each edit comes with the
    pipeline's record (plan, steps, failure, editor calls), kept by the runner in OUT/agent/."""
    import logging

    from earl.agents.decomposer import ChatDecomposer
    from earl.agents.editor import PipelineEditor
    from earl.agents.pipeline import AgentPipeline
    from earl.agents.unified import UnifiedDecomposer

    if args.agent == "openai":
        dec = ChatDecomposer.from_options(base_url=args.decomposer_base_url or os.environ.get("EARL_DECOMPOSER_BASE_URL"),
                                          model=args.decomposer_model or os.environ.get("EARL_DECOMPOSER_MODEL"))
    else:
        dec = UnifiedDecomposer.from_pretrained(args.agent)
    pipe = AgentPipeline(dec, PipelineEditor.from_pretrained(args.model), fallback=True, seed=args.seed)
    log = logging.getLogger("earl.agents")

    def edit(image, instruction):
        result = pipe(image, instruction)
        if result.failure:
            log.warning("agent: %s on %r (%s); the editor got the instruction itself", result.failure, instruction[:60],
                        result.error)
        return result.images[0], result.to_dict()

    return edit


def _cmd_eval_benchmark(args) -> None:
    from earl.benchmarks import earl_suite, gedit, imgedit, imgedit_uge
    from earl.benchmarks.runner import JudgeOptions, run_benchmark

    if args.what == "gedit":
        bench = gedit
        items = gedit.load_gedit(args.data, language=args.language)
        specs = gedit.judge_specs(gedit.load_prompts(args.prompts))
    elif args.what == "earl-suite":
        bench = earl_suite
        items = earl_suite.load_suite(args.data, benchmarks=args.benchmarks.split(",") if args.benchmarks else None)
        specs = earl_suite.judge_specs()
    elif args.what == "imgedit-uge":
        bench = imgedit_uge
        items = imgedit_uge.load_uge(args.edits, args.images)
        specs = imgedit_uge.judge_specs(imgedit_uge.load_prompt(args.prompt))
    else:
        bench = imgedit
        items = imgedit.load_imgedit(args.edits, args.images)
        specs = imgedit.judge_specs(imgedit.load_prompts(args.prompts))
    if args.limit:
        items = items[: args.limit]
    opts = JudgeOptions(max_tokens=args.max_tokens, temperature=0.0, concurrency=args.concurrency,
                        retries=args.retries)
    result = run_benchmark(bench, items, specs, args.out, edit=_edit_fn(args), backend=_judge_backend(args),
                           opts=opts, retry_failed=args.retry_failed)
    print(bench.format_table(result))
    if "agent" in result:
        a = result["agent"]
        fails = ", ".join(f"{k} {v}" for k, v in sorted(a["plan_failures"].items())) or "none"
        print(f"agent: {a['edits']} edits, steps/edit {a['steps_per_edit']:.2f}, editor calls/edit "
              f"{a['editor_calls_per_edit']:.2f}, plan failures: {fails}, fallbacks {a['fallbacks']}")
    print(f"results: {Path(args.out) / 'results.json'} (also results.csv, results.md)")


def _benchmark_args(p) -> None:
    p.add_argument("--out", required=True, help="output directory (resumable: images and judgements are kept)")
    p.add_argument("--model", default=None, help="earl editor directory (default: the bundled checkpoint)")
    p.add_argument("--no-generate", action="store_true", help="only judge/score images already in OUT/images")
    p.add_argument("--agent", default=None, metavar="DECOMPOSER",
                   help="edit through the agent pipeline: 'openai' (a chat VLM decomposer, see --decomposer-base-url) "
                        "or an earl decomposer directory, in front of the --model editor")
    p.add_argument("--decomposer-base-url", default=None, help="with --agent openai (default: $EARL_DECOMPOSER_BASE_URL)")
    p.add_argument("--decomposer-model", default=None, help="with --agent openai (default: $EARL_DECOMPOSER_MODEL)")
    p.add_argument("--judge", choices=["openai", "local"], default="openai",
                   help="openai: any OpenAI-compatible server (vLLM, SGLang, `earl serve judge`, OpenAI); "
                        "local: a transformers model in this process")
    p.add_argument("--judge-base-url", default=None, help="default: $EARL_JUDGE_BASE_URL")
    p.add_argument("--judge-model", default=None, help="served model name (default: $EARL_JUDGE_MODEL or the "
                                                       "server's first model); the key comes from the environment")
    p.add_argument("--judge-model-path", default=None, help="with --judge local: the model directory")
    p.add_argument("--judge-timeout", type=float, default=120.0)
    p.add_argument("--no-judge", action="store_true", help="ask nothing; score the judgements already on disk")
    p.add_argument("--retry-failed", action="store_true", help="ask again the judgements stored as failed")
    p.add_argument("--concurrency", type=int, default=16, help="judge requests in flight")
    p.add_argument("--retries", type=int, default=2, help="retries per judge call (then it is a counted failure)")
    p.add_argument("--max-tokens", type=int, default=1400, help="judge reply budget")
    p.add_argument("--limit", type=int, default=0, help="only the first N items (smoke runs)")
    _sampling_args(p)


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate an editor").add_subparsers(dest="what", required=True)
    es = ev.add_parser("shapes", help="edit every sample of a ShapesEdit set, judge with the oracle, report")
    es.add_argument("--model", default=None, help="editor directory (default: the bundled checkpoint)")
    es.add_argument("--agent", nargs="?", const="", default=None, metavar="DECOMPOSER",
                    help="evaluate the agent pipeline instead: decomposer directory (bare --agent: the bundled one; "
                         "'ground-truth': each sample's own program), with --model as its editor")
    _agent_args(es)
    es.add_argument("--data", required=True)
    es.add_argument("--out", required=True, help="output directory (resumable: existing images are kept)")
    es.add_argument("--batch-size", type=int, default=32)
    _sampling_args(es)
    es.add_argument("--decoder", default="auto", choices=["auto", "hf", "static", "compiled", "lean"],
                    help="the sampler's decoder (earl.generate.choose_decoder): auto = earl.lean on a CPU where it "
                         "reproduces the model, else the Hugging Face forward; static = preallocated KV cache; "
                         "compiled = static + CUDA-graph capture (CUDA only); hf; lean")
    es.set_defaults(func=_cmd_eval_shapes)

    eg = ev.add_parser("gedit", help="GEdit-Bench: edit, judge with the benchmark's VIEScore prompts, official scores")
    eg.add_argument("--data", required=True, help="local copy of stepfun-ai/GEdit-Bench (parquet or save_to_disk)")
    eg.add_argument("--prompts", required=True, help="directory with sc_prompt.txt and pq_prompt.txt, "
                                                     "e.g. ../shared/benchmarks/gedit")
    eg.add_argument("--language", default="en", choices=["en", "cn"])
    _benchmark_args(eg)
    eg.set_defaults(func=_cmd_eval_benchmark)
    ei = ev.add_parser("imgedit", help="ImgEdit-Bench (Basic): edit, judge with its per-type prompts, official scores")
    ei.add_argument("--edits", required=True, help="basic_edit.json ({key: {id, prompt, edit_type}})")
    ei.add_argument("--images", required=True, help="root of the source images (each `id` is a path under it)")
    ei.add_argument("--prompts", required=True, help="the benchmark's prompts.json")
    _benchmark_args(ei)
    ei.set_defaults(func=_cmd_eval_benchmark)

    eu = ev.add_parser("imgedit-uge", help="ImgEdit-Bench's UGE (Hard) suite: edit, judge, the official mean")
    eu.add_argument("--edits", required=True, help="UGE_edit.json ({key: {id, prompt}})")
    eu.add_argument("--images", required=True, help="root of the source images (each `id` is a path under it)")
    eu.add_argument("--prompt", required=True, help="a text file holding the UGE judge prompt (the prompt string "
                                                    "of the official Benchmark/UGE/UGE_bench.py)")
    _benchmark_args(eu)
    eu.set_defaults(func=_cmd_eval_benchmark)
    esu = ev.add_parser("earl-suite", help="EARL's suite (OmniEdit, EmuEdit, AURORA, MagicBrush, VisMin, I2EBench) "
                                           "from local copies: VIEScore SC, PQ, O per benchmark and averaged")
    esu.add_argument("--data", required=True, help="one directory per benchmark, each with an items.jsonl of "
                                                    '{"id", "instruction", "source_image"} (see eval/README.md)')
    esu.add_argument("--benchmarks", default=None, help="comma-separated directory names (default: all found)")
    _benchmark_args(esu)
    esu.set_defaults(func=_cmd_eval_benchmark)

    erm = ev.add_parser("rrm", help="re-run a reward-model recipe's held-out evaluation on a saved model")
    erm.add_argument("recipe", help="the recipe it was trained with, e.g. recipes/shapes/rrm_sft_scan.yaml")
    erm.add_argument("overrides", nargs="*", help="the same key.sub=value overrides as in training")
    erm.add_argument("--model", required=True, help="the model directory (OUT_DIR/model)")
    erm.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    erm.set_defaults(func=_cmd_eval_rrm)
    er = ev.add_parser("rewardbench", help="pairwise accuracy of reward models on held-out ShapesEdit preferences")
    er.add_argument("--rrm", action="append", help="NAME=DIR of a reasoning reward model (repeatable)")
    er.add_argument("--scalar", action="append", help="NAME=DIR of a scalar Bradley-Terry reward model (repeatable)")
    er.add_argument("--verifier", action="append",
                    help="LABEL=NAME[,key=value...]: any earl.verify verifier, e.g. "
                         "'viescore=viescore,base_url=http://localhost:8000/v1,model=Qwen2.5-VL-72B' (repeatable)")
    er.add_argument("--pairs", default=None,
                    help="real preference pairs (jsonl: source, instruction, image_a, image_b, preferred a|b|same; "
                         "image paths relative to the file) instead of ShapesEdit's held-out pairs")
    er.add_argument("--editreward-bench", default=None, metavar="DIR",
                    help="a local copy of EditScore's EditReward-Bench (the Hugging Face dataset's Arrow or Parquet "
                         "files), scored as its calculate_statistics.py does, instead of ShapesEdit's held-out pairs")
    er.add_argument("--out", required=True)
    er.add_argument("--samples", type=int, default=200, help="held-out samples (about 4 pairs each)")
    er.add_argument("--seed", type=int, default=987_654)
    er.add_argument("--image-tokenizer", default=None, help="with no --rrm: the tokenizer the oracle's images go through")
    er.add_argument("--max-new-tokens", type=int, default=320)
    er.add_argument("--avg-k", type=int, default=0, help="also score each --rrm by Avg@k self-consistency (k > 1)")
    er.add_argument("--expected-score", action="store_true",
                    help="also score each --rrm greedily with the score read as an expectation (E[score])")
    er.add_argument("--expected-points", action="store_true",
                    help="also score each --rrm greedily as 10 x the mean P(yes) of its verdicts (E[points])")
    er.add_argument("--baseline", action="append", default=None, metavar="SCORER",
                    help="compare every scorer with this one pair by pair, e.g. 'rrm_sft E[score]' (repeatable; "
                         "default: the --scalar models)")
    er.set_defaults(func=_cmd_eval_rewardbench)


def _cmd_checkpoint_pack(args) -> None:
    from earl.checkpoint import pack_checkpoint
    from earl.io import read_json

    evals = _named_paths(args.eval, "--eval", "NAME=PATH/results.json")
    recipe = read_json(args.recipe_json) if args.recipe_json else None
    manifest = pack_checkpoint(args.model, args.out, name=args.name or Path(args.out).name, command=args.command,
                               recipe=recipe, evals=evals, max_bytes=int(args.max_mib * 2**20))
    print(f"packed {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB, into {args.out}")
    for name, m in manifest["metrics"].items():
        if "overall" in m:
            print(f"  {name}: success {m['overall']['success']:.3f} (n={m['overall'].get('n')})")
        else:
            print(f"  {name}: " + ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in m["held_out"].items()))


def _cmd_checkpoint_verify(args) -> None:
    from earl.checkpoint import verify_checkpoint

    manifest = verify_checkpoint(args.dir)
    print(f"{args.dir}: {len(manifest['files'])} files match the manifest (commit {manifest.get('commit')})")


def _cmd_checkpoint_average(args) -> None:
    from earl.averaging import average_editors

    out = average_editors(args.models, args.out, weights=args.weights)
    print(f"wrote {out}: the mean of {len(args.models)} models' backbones")


def _add_checkpoint_parser(sub) -> None:
    ck = sub.add_parser("checkpoint", help="checkpoints: bundle, verify, average").add_subparsers(dest="what", required=True)
    cp = ck.add_parser("pack", help="copy an editor into a checkpoint directory with a manifest (sha256, metrics)")
    cp.add_argument("--model", required=True, help="editor directory (UnifiedEditor.save_pretrained)")
    cp.add_argument("--out", required=True, help="checkpoint directory to (re)write, e.g. checkpoints/shapes-editor")
    cp.add_argument("--name", default=None)
    cp.add_argument("--recipe-json", default=None, help="the training run's recipe.json (recorded in the manifest)")
    cp.add_argument("--eval", action="append", help="NAME=results.json of an `earl eval` run, or NAME=final_metrics.json of a "
                    "reward-model run (its held-out evaluation); repeatable")
    cp.add_argument("--command", default="", help="the command that re-makes this checkpoint")
    cp.add_argument("--max-mib", type=float, default=25.0, help="refuse a larger model")
    cp.set_defaults(func=_cmd_checkpoint_pack)
    cv = ck.add_parser("verify", help="check a checkpoint's files against its manifest")
    cv.add_argument("dir")
    cv.set_defaults(func=_cmd_checkpoint_verify)
    ca = ck.add_parser("average", help="the mean of the weights of editors fine-tuned from one start (model soup, "
                       "WARM): e.g. a GCPO run's last checkpoints, or several seeds")
    ca.add_argument("models", nargs="+", help="editor directories (at least two) sharing their tokenizers")
    ca.add_argument("--out", required=True, help="editor directory to (re)write")
    ca.add_argument("--weights", type=float, nargs="+", default=None, help="one positive weight per model "
                    "(normalised; default equal)")
    ca.set_defaults(func=_cmd_checkpoint_average)


def _cmd_convert_emu3(args) -> None:
    from earl.model import UnifiedEditor

    cot = {"auto": None, "yes": True, "no": False}[args.cot]
    editor = UnifiedEditor.from_pretrained(args.model, vision_tokenizer=args.vision_tokenizer, cot=cot,
                                           image_area=args.image_area)
    out = editor.save_pretrained(args.out)
    print(f"wrote {out}: an earl editor (chain-of-thought {'on' if editor.config.cot else 'off'}, EARL's sequence "
          "order)")


def _add_convert_parser(sub) -> None:
    conv = sub.add_parser("convert", help="write other formats as earl editors").add_subparsers(dest="what",
                                                                                              required=True)
    ce = conv.add_parser("emu3", help="an Emu3 checkpoint in BAAI's original format (EARL's released editors), "
                         "read without remote code")
    ce.add_argument("--model", required=True, help="the decoder directory (config.json model_type 'Emu3', "
                    "safetensors, emu3.tiktoken, emu3_vision_tokens.txt)")
    ce.add_argument("--vision-tokenizer", required=True, help="the BAAI/Emu3-VisionTokenizer directory")
    ce.add_argument("--out", required=True, help="editor directory to write")
    ce.add_argument("--cot", choices=["auto", "yes", "no"], default="auto",
                    help="chain-of-thought editor; auto: when the model's name says 'thinking'")
    ce.add_argument("--image-area", type=int, default=None, help="pixels of area images are resized to "
                    "(default 65536, EARL's 256x256)")
    ce.set_defaults(func=_cmd_convert_emu3)


def _cmd_demo(args) -> None:
    from earl.demo import run_demo

    run_demo(Path(args.out), fast=args.fast)


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the quickstart job: data -> tokenizer -> report")
    demo.add_argument("--out", default="runs/demo", help="working directory for the demo's outputs")
    demo.add_argument("--fast", action="store_true", help="a smaller run (smoke test)")
    demo.set_defaults(func=_cmd_demo)


def _cmd_study(args) -> None:
    from earl.config import load_config
    from earl.study import StudyRecipe, run_study, select_arms

    cfg = load_config(StudyRecipe, args.recipe, args.overrides)
    if args.arms:
        cfg = select_arms(cfg, [a.strip() for a in args.arms.split(",") if a.strip()])
    run_study(cfg, progress=not args.no_progress)
    out = Path(cfg.out_dir)
    print((out / "report.md").read_text())
    print(f"results: {out / 'results.json'}; curves: {out / 'curves.png'}")


def _add_study_parser(sub) -> None:
    st = sub.add_parser("study", help="train and evaluate several recipes over seeds; a table with 95%% CIs (resumable)")
    st.add_argument("recipe", help="study YAML, e.g. recipes/shapes/study.yaml")
    st.add_argument("overrides", nargs="*", help="key=value overrides of the study's fields")
    st.add_argument("--arms", default=None, metavar="A,B",
                    help="run only these arms (and the arms they start from), e.g. to re-run one elsewhere")
    st.add_argument("--no-progress", action="store_true", help="no progress bars")
    st.set_defaults(func=_cmd_study)


def _cmd_bench_generate(args) -> None:
    from earl.generation_bench import bench_generate, format_table
    from earl.io import atomic_write_json

    sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
    res = bench_generate(size=args.size, image_size=args.image_size, batch_sizes=sizes,
                         guidance_scale=args.guidance_scale, repeats=args.repeats, seed=args.seed,
                         num_threads=args.threads, device=args.device, dtype=args.dtype, attention=args.attention)
    print(format_table(res))
    if args.out:
        atomic_write_json(args.out, res)
        print(f"results written to {args.out}")


def _cmd_bench_text(args) -> None:
    from earl.generation_bench import bench_text, format_text_table
    from earl.io import atomic_write_json

    res = bench_text(size=args.size, batch_size=args.batch_size, prompt_len=args.prompt_len,
                     new_tokens=args.new_tokens, prompts=args.prompts, traces=args.traces, repeats=args.repeats,
                     seed=args.seed, num_threads=args.threads)
    print(format_text_table(res))
    if args.out:
        atomic_write_json(args.out, res)
        print(f"results written to {args.out}")


def _cmd_bench_attention(args) -> None:
    import os

    import torch

    from earl.io import atomic_write_json

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise EarlError("earl bench attention needs a GPU (on a CPU, TRITON_INTERPRET=1 runs the code path at tiny "
                        "sizes, without meaningful times)")
    from earl.kernels.timing import bench_attention, format_table

    def ints(text):
        return tuple(int(x) for x in text.split(",") if x.strip())

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    res = bench_attention(ints(args.batch_sizes), ints(args.cache_lengths), ints(args.prefill_lengths), args.heads,
                          args.kv_heads, args.head_dim, dtype, args.repeats)
    print(format_table(res))
    if args.out:
        atomic_write_json(args.out, res)


def _add_bench_parser(sub) -> None:
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
    bg.add_argument("--out", default=None, help="write the results as JSON here")
    bg.set_defaults(func=_cmd_bench_generate)

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
    bt.set_defaults(func=_cmd_bench_text)

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
    ba.set_defaults(func=_cmd_bench_attention)


def _cmd_serve_judge(args) -> None:
    from earl.serve.judge import serve_judge

    serve_judge(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                api_key=args.api_key)


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="servers").add_subparsers(dest="what", required=True)
    sj = serve.add_parser("judge", help="serve a local image-text-to-text model via the OpenAI chat-completions API")
    sj.add_argument("--model", required=True, help="local model directory (AutoModelForImageTextToText + processor)")
    sj.add_argument("--port", type=int, required=True)
    sj.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    sj.add_argument("--max-batch", type=int, default=8, help="most requests answered by one batched generate")
    sj.add_argument("--max-wait-ms", type=float, default=5.0, help="how long to collect requests for a batch")
    sj.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 routes (default: "
                                                    "$EARL_API_KEY; prefer the variable, arguments show in ps)")
    sj.set_defaults(func=_cmd_serve_judge)


def _cmd_app(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise EarlError('earl app needs gradio: pip install -e ".[app]"') from None
    from earl.app import serve

    serve(args.model, agent=args.agent, host=args.host, port=args.port)


def _add_app_parser(sub) -> None:
    ap = sub.add_parser("app", help="a web UI for editing (Gradio; needs the app extra)")
    ap.add_argument("--model", default=None, help="editor directory (default: the bundled checkpoint)")
    ap.add_argument("--agent", action="store_true", help="edit through the multi-agent pipeline (bundled decomposer)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    ap.set_defaults(func=_cmd_app)


def _cmd_plot_metrics(args) -> None:
    from earl.viz import plot_metrics

    runs = _named_paths(args.runs, "run", "RUN_DIR or LABEL=RUN_DIR (a training run's output directory)",
                        name_optional=True)
    plot_metrics(runs, args.key, args.out, smooth=args.smooth)
    print(f"wrote {args.out}")


def _add_plot_parser(sub) -> None:
    plot = sub.add_parser("plot", help="pictures of training runs").add_subparsers(dest="what", required=True)
    pm = plot.add_parser("metrics", help="training curves from runs' metrics.jsonl (one panel per --key)")
    pm.add_argument("runs", nargs="+", help="run directories (or LABEL=DIR), e.g. runs/rrm_gcpo_bundle")
    pm.add_argument("--key", action="append", required=True,
                    help="a logged metric, e.g. gcpo/pair_correct or eval/pairwise_accuracy (repeatable)")
    pm.add_argument("--smooth", type=int, default=1, help="moving average over this many logged steps")
    pm.add_argument("--out", required=True, help="the PNG to write")
    pm.set_defaults(func=_cmd_plot_metrics)


def build_parser() -> argparse.ArgumentParser:
    """The `earl` parser: one builder per command (group), each beside its handlers; this order is the
    order of `earl --help`."""
    p = argparse.ArgumentParser(prog="earl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_data_parser(sub)
    _add_judge_parser(sub)
    _add_train_parser(sub)
    _add_edit_parser(sub)
    _add_agent_parser(sub)
    _add_eval_parser(sub)
    _add_checkpoint_parser(sub)
    _add_convert_parser(sub)
    _add_demo_parser(sub)
    _add_study_parser(sub)
    _add_bench_parser(sub)
    _add_plot_parser(sub)
    _add_serve_parser(sub)
    _add_app_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EarlError as e:
        print(f"earl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("earl: interrupted (outputs written so far are complete; re-run to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
