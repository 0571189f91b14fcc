"""`earl eval`: an editor (or the agent pipeline) on ShapesEdit, the published benchmarks
(`earl.cli.benchmarks`), and reward models on held-out or real preference pairs."""

from __future__ import annotations

import json
from pathlib import Path

from earl.cli import benchmarks
from earl.cli.agent import add_agent_args, agent_pipeline
from earl.cli.common import add_sampling_args, format_generation, named_paths, schedule_flags
from earl.config import load_config
from earl.errors import EarlError
from earl.io import atomic_write_json
from earl.verify.base import build_verifier


def _cmd_shapes(args) -> None:
    # lazy: the editor's evaluation loads torch and transformers; the oracle's table, datasets and pyarrow
    from earl.evaluate import run_shapes_eval
    from earl.generate import SamplingConfig
    from earl.pipeline import default_checkpoint
    from earl.shapes.judge import format_table

    schedule, window = schedule_flags(args)
    if args.agent is not None:
        _shapes_agent(args, format_table)
        return
    sampling = SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature)
    model = args.model or str(default_checkpoint())
    results = run_shapes_eval(model, args.data, args.out, sampling, batch_size=args.batch_size, seed=args.seed,
                              decoder=args.decoder, schedule=schedule, window=window, engine=args.engine)
    print(format_table(results))
    print(format_generation(results.get("generation")))
    print(f"results: {Path(args.out) / 'results.json'}; image grid: {Path(args.out) / 'grid.png'}")


def _shapes_agent(args, format_table) -> None:
    """`earl eval shapes --agent`: the agent pipeline over the test set, with its plan statistics."""
    # lazy: the agent's evaluation reads the test set with datasets and pyarrow
    from earl.agents.evaluate import format_agent, run_agent_eval

    if args.decoder != "auto":
        raise EarlError("--decoder applies to the editor's own evaluation; with --agent the editor decodes "
                        "with 'auto'")
    if args.engine != "earl":
        raise EarlError("--engine vllm applies to the editor's own evaluation; with --agent the editor samples "
                        "with earl's sampler")
    pipe = agent_pipeline(args.agent or None, args.model, args)
    results = run_agent_eval(pipe, args.data, args.out, batch_size=args.batch_size)
    print(format_table(results))
    print(format_agent(results["agent"]))
    print(format_generation(results.get("generation")))
    print(f"results: {Path(args.out) / 'results.json'}; image grid: {Path(args.out) / 'grid.png'}; "
          f"step strips: {Path(args.out) / 'steps'}")


def _cmd_rrm(args) -> None:
    # lazy: the reward model's trainer loads torch and transformers
    from earl.train.rrm import RRMRecipe, evaluate_saved_rrm

    cfg = load_config(RRMRecipe, args.recipe, args.overrides)
    metrics = {"model": args.model, "recipe": args.recipe, "overrides": args.overrides,
               **evaluate_saved_rrm(cfg, args.model)}
    if args.out:
        atomic_write_json(args.out, metrics)
    print(json.dumps(metrics, indent=2))


def _cmd_verifier(args) -> None:
    # lazy: the reward model loads torch and transformers
    from earl.model import UnifiedEditor
    from earl.train.verifier_data import load_examples, measure_verifier

    examples, labels = load_examples(args.examples, truth=True)
    report = measure_verifier(UnifiedEditor.from_pretrained(args.model), examples, args.max_new_tokens)
    report = {"model": args.model, "examples": args.examples, "labels": labels, **report}
    if args.out:
        atomic_write_json(args.out, report)

    def pct(x):
        return "n/a" if not x["n"] else f"{100 * x['share']:.1f}% [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]"

    for group, r in report.items():
        if isinstance(r, dict) and "point_accuracy" in r:
            print(f"{group}: {r['images']} images ({r['unparsed']} unparsed): point accuracy "
                  f"{pct(r['point_accuracy'])}, failing points caught {pct(r['failing_points_caught'])} "
                  f"(n={r['failing_points_caught']['n']}), images with every point right {pct(r['images_all_points_right'])}")


def _cmd_rewardbench(args) -> None:
    # lazy: the pairwise bench loads torch and the image tokenizer
    from earl.rrm.rewardbench import format_table, parse_verifier_spec, run_pair_file_bench, run_rewardbench

    rrms = named_paths(args.rrm, "--rrm", "NAME=DIR (a model written by `earl train rrm-sft`)")
    scalars = named_paths(args.scalar, "--scalar", "NAME=DIR (a model written by `earl train rm-scalar`)")
    specs = named_paths(args.verifier, "--verifier", "LABEL=NAME[,key=value...] (an earl.verify verifier)")
    verifiers = {}
    for label, spec in specs.items():
        name, options = parse_verifier_spec(spec)
        if name == "learned" and isinstance(options.get("writer"), str):
            from earl.agents.build import build_writer  # lazy: `plan` loads the decomposer

            options["writer"] = build_writer(options["writer"])  # plan, plan:DIR, or a learned writer's directory
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
        _editreward_bench(args, rrms, scalars, verifiers)
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


def _editreward_bench(args, rrms: dict, scalars: dict, verifiers: dict) -> None:
    """EditScore's EditReward-Bench from a local copy (`earl.rrm.editreward_bench`); the local models'
    weights are fingerprinted so a rerun into the same --out reuses their results."""
    # lazy: the bench reads Arrow files with pyarrow and fingerprints weights with torch
    from earl.rrm.editreward_bench import format_editreward_table, model_source, run_editreward_bench

    if args.baseline:
        raise EarlError("--baseline applies to ShapesEdit's held-out pairs and --pairs files, not to --editreward-bench")
    sources = {**{n: model_source("rrm", d, max_new_tokens=args.max_new_tokens) for n, d in rrms.items()},
               **{n: model_source("scalar", d) for n, d in scalars.items()}}
    print(format_editreward_table(run_editreward_bench(args.editreward_bench, verifiers, args.out, sources=sources)))


def _add_shapes(ev) -> None:
    es = ev.add_parser("shapes", help="edit every sample of a ShapesEdit set, judge with the oracle, report")
    es.add_argument("--model", default=None, help="editor directory (default: the bundled checkpoint)")
    es.add_argument("--agent", nargs="?", const="", default=None, metavar="DECOMPOSER",
                    help="evaluate the agent pipeline instead: decomposer directory (bare --agent: the bundled one; "
                         "'ground-truth': each sample's own program), with --model as its editor")
    es.add_argument("--data", required=True)
    es.add_argument("--out", required=True, help="output directory (resumable: existing images are kept)")
    es.add_argument("--batch-size", type=int, default=32)
    add_sampling_args(es)
    add_agent_args(es)  # after the sampling flags: the agent's editor takes their --schedule and --window
    es.add_argument("--decoder", default="auto", choices=["auto", "hf", "static", "compiled", "lean"],
                    help="the sampler's decoder (earl.generate.choose_decoder): auto = earl.lean on a CPU where it "
                         "reproduces the model, else the Hugging Face forward; static = preallocated KV cache; "
                         "compiled = static + CUDA-graph capture (CUDA only); hf; lean")
    es.add_argument("--engine", default="earl", choices=["earl", "vllm"],
                    help="what samples the edits: earl's sampler, or vLLM over the editor's backbone "
                         "(earl.generate.vllm_engine: needs vllm installed; no classifier-free guidance)")
    es.set_defaults(func=_cmd_shapes)


def _cmd_writer(args) -> None:
    # lazy: the writer loads torch and transformers
    from earl.agents.build import load_writer
    from earl.train.writer import measure_on_test_sets

    def pct(x: dict) -> str:
        if not x["n"]:
            return "n/a (nothing to count)"
        lo, hi = x["ci95"]
        return f"{100 * x['share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    writer = load_writer(args.model)
    report = measure_on_test_sets(writer, n=args.n, out=args.out)
    for split, r in report.items():
        w, c = r["writer"], r["perfect_writer_other_seed"]
        cats = ", ".join(f"{k} {pct(v)}" for k, v in w["per_category"].items())
        print(f"{split}: exact points matched {pct(w['exact_points_matched'])} ({cats}); failed requests "
              f"{w['failed_requests']['k']}/{w['requests']} {w['failures'] or ''}; written points valid {pct(w['written_valid'])}; "
              f"a writer that knows the answer: {pct(c['exact_points_matched'])}")


def _add_reward_models(ev) -> None:
    ew = ev.add_parser("writer", help="a principle writer's agreement with the exact points on the fixed test sets")
    ew.add_argument("--model", "--writer", dest="model", required=True, metavar="DIR|plan|plan:DIR",
                    help="the writer directory (earl train principle-writer's OUT_DIR/model), or plan: the "
                         "decomposer's plan applied to the scene parsed from the source image (plan:DIR for "
                         "another decomposer)")
    ew.add_argument("--n", type=int, default=200, help="samples of each fixed test set (simple, complex)")
    ew.add_argument("--out", default=None, help="also write the report to this JSON file")
    ew.set_defaults(func=_cmd_writer)
    evf = ev.add_parser("verifier", help="a reward model's verdicts against the oracle's on `earl data verifier` "
                                         "folders (e.g. on the agent's own final images)")
    evf.add_argument("--model", required=True, help="the reward model directory")
    evf.add_argument("--examples", required=True, nargs="+", help="folders written by `earl data verifier`")
    evf.add_argument("--max-new-tokens", type=int, default=320)
    evf.add_argument("--out", default=None, help="also write the report to this JSON file")
    evf.set_defaults(func=_cmd_verifier)
    erm = ev.add_parser("rrm", help="re-run a reward-model recipe's held-out evaluation on a saved model")
    erm.add_argument("recipe", help="the recipe it was trained with, e.g. recipes/shapes/rrm_sft_scan.yaml")
    erm.add_argument("overrides", nargs="*", help="the same key.sub=value overrides as in training")
    erm.add_argument("--model", required=True, help="the model directory (OUT_DIR/model)")
    erm.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    erm.set_defaults(func=_cmd_rrm)
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
    er.set_defaults(func=_cmd_rewardbench)


def register(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate an editor").add_subparsers(dest="what", required=True)
    _add_shapes(ev)
    benchmarks.register(ev)
    _add_reward_models(ev)
