"""`earl eval gedit|imgedit|imgedit-uge|earl-suite`: the published benchmarks, one table row each.

Every benchmark runs the same way (edit the items, ask the judge, score with the benchmark's own
rules; `earl.benchmarks.runner`); a row of `BENCHMARKS` says only what differs: its module, its data
flags, and how its items and judge prompts are read from them. A new benchmark is one more row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from earl.agents.decomposer import ChatDecomposer
from earl.benchmarks import earl_suite, gedit, imgedit, imgedit_uge
from earl.benchmarks.runner import JudgeOptions, run_benchmark
from earl.cli.common import add_sampling_args, format_generation, schedule_flags
from earl.verify.chat import build_chat_backend


@dataclass(frozen=True)
class Benchmark:
    module: ModuleType  # what the runner scores with: score, format_table, csv_rows
    help: str
    flags: tuple[tuple[str, dict], ...]  # its data flags: (flag, add_argument keywords)
    load: Callable  # parsed args -> (items, judge specs)


_SOURCE_IMAGES = ("--images", dict(required=True, help="root of the source images (each `id` is a path under it)"))

BENCHMARKS = {
    "gedit": Benchmark(
        gedit, "GEdit-Bench: edit, judge with the benchmark's VIEScore prompts, official scores",
        (("--data", dict(required=True, help="local copy of stepfun-ai/GEdit-Bench (parquet or save_to_disk)")),
         ("--prompts", dict(required=True, help="directory with sc_prompt.txt and pq_prompt.txt, "
                                                "e.g. /data/gedit-prompts")),
         ("--language", dict(default="en", choices=["en", "cn"]))),
        lambda a: (gedit.load_gedit(a.data, language=a.language), gedit.judge_specs(gedit.load_prompts(a.prompts)))),
    "imgedit": Benchmark(
        imgedit, "ImgEdit-Bench (Basic): edit, judge with its per-type prompts, official scores",
        (("--edits", dict(required=True, help="basic_edit.json ({key: {id, prompt, edit_type}})")),
         _SOURCE_IMAGES,
         ("--prompts", dict(required=True, help="the benchmark's prompts.json"))),
        lambda a: (imgedit.load_imgedit(a.edits, a.images), imgedit.judge_specs(imgedit.load_prompts(a.prompts)))),
    "imgedit-uge": Benchmark(
        imgedit_uge, "ImgEdit-Bench's UGE (Hard) suite: edit, judge, the official mean",
        (("--edits", dict(required=True, help="UGE_edit.json ({key: {id, prompt}})")),
         _SOURCE_IMAGES,
         ("--prompt", dict(required=True, help="a text file holding the UGE judge prompt (the prompt string "
                                               "of the official Benchmark/UGE/UGE_bench.py)"))),
        lambda a: (imgedit_uge.load_uge(a.edits, a.images),
                   imgedit_uge.judge_specs(imgedit_uge.load_prompt(a.prompt)))),
    "earl-suite": Benchmark(
        earl_suite, "EARL's suite (OmniEdit, EmuEdit, AURORA, MagicBrush, VisMin, I2EBench) "
                    "from local copies: VIEScore SC, PQ, O per benchmark and averaged",
        (("--data", dict(required=True, help="one directory per benchmark, each with an items.jsonl of "
                                             '{"id", "instruction", "source_image"} (see eval/README.md)')),
         ("--benchmarks", dict(default=None, help="comma-separated directory names (default: all found)"))),
        lambda a: (earl_suite.load_suite(a.data, benchmarks=a.benchmarks.split(",") if a.benchmarks else None),
                   earl_suite.judge_specs())),
}


def _judge_backend(args):
    """The judge for a benchmark run, or None with --no-judge (then only what is on disk is scored)."""
    if args.no_judge:
        return None
    return build_chat_backend(args.judge, base_url=args.judge_base_url, model=args.judge_model,
                              model_path=args.judge_model_path, timeout=args.judge_timeout,
                              max_connections=args.concurrency)


def _edit_fn(args):
    """Edits from an earl editor directory, or None with --no-generate (score images already in OUT/images)."""
    if args.no_generate:
        return None
    if args.agent is not None:
        return _benchmark_agent(args)
    # lazy: the pipeline and the sampler load torch and transformers
    from earl.generate import GenerationCost
    from earl.pipeline import EditPipeline

    schedule, window = schedule_flags(args)
    pipe = EditPipeline.from_pretrained(args.model, engine=args.engine)
    cost = GenerationCost(schedule, window)

    def edit(image, instruction):
        res = pipe(image, instruction, guidance_scale=args.guidance_scale, temperature=args.temperature,
                   seed=args.seed, schedule=schedule, window=window)
        cost.add_counts(1, res.forward_passes, res.tokens)
        return res.images[0]

    edit.cost = cost
    return edit


def _benchmark_agent(args):
    """The agent pipeline as a benchmark's editor: a chat VLM decomposer ('openai', from
    --decomposer-base-url / --decomposer-model or $EARL_DECOMPOSER_BASE_URL / $EARL_DECOMPOSER_MODEL) or an
    earl decomposer directory, in front of the --model editor. A failed plan falls back to the editor
    alone (the benchmark needs an image per item); how many did is logged. Each edit comes with the
    pipeline's record (plan, steps, failure, editor calls), kept by the runner in OUT/agent/."""
    # lazy: the editor and earl's decomposer load torch and transformers
    from earl.agents.editor import PipelineEditor
    from earl.agents.pipeline import AgentPipeline
    from earl.agents.unified import UnifiedDecomposer

    if args.agent == "openai":
        dec = ChatDecomposer.from_options(base_url=args.decomposer_base_url or os.environ.get("EARL_DECOMPOSER_BASE_URL"),
                                          model=args.decomposer_model or os.environ.get("EARL_DECOMPOSER_MODEL"))
    else:
        dec = UnifiedDecomposer.from_pretrained(args.agent)
    schedule, window = schedule_flags(args)
    editor = PipelineEditor.from_pretrained(args.model, schedule=schedule, window=window, engine=args.engine)
    pipe = AgentPipeline(dec, editor, fallback=True, seed=args.seed)
    log = logging.getLogger("earl.agents")

    def edit(image, instruction):
        result = pipe(image, instruction)
        if result.failure:
            log.warning("agent: %s on %r (%s); the editor got the instruction itself", result.failure, instruction[:60],
                        result.error)
        return result.images[0], result.to_dict()

    edit.cost = editor.cost
    return edit


def _print_agent(a: dict) -> None:
    fails = ", ".join(f"{k} {v}" for k, v in sorted(a["plan_failures"].items())) or "none"
    print(f"agent: {a['edits']} edits, steps/edit {a['steps_per_edit']:.2f}, editor calls/edit "
          f"{a['editor_calls_per_edit']:.2f}, plan failures: {fails}, fallbacks {a['fallbacks']}")


def _cmd_benchmark(args) -> None:
    schedule_flags(args)  # before the items load: a bad --schedule / --window is a usage error at once
    bench = BENCHMARKS[args.what].module
    items, specs = BENCHMARKS[args.what].load(args)
    if args.limit:
        items = items[: args.limit]
    opts = JudgeOptions(max_tokens=args.max_tokens, temperature=0.0, concurrency=args.concurrency,
                        retries=args.retries)
    edit = _edit_fn(args)
    result = run_benchmark(bench, items, specs, args.out, edit=edit, backend=_judge_backend(args),
                           opts=opts, retry_failed=args.retry_failed, cost=getattr(edit, "cost", None))
    print(bench.format_table(result))
    if "agent" in result:
        _print_agent(result["agent"])
    if "generation" in result:
        print(format_generation(result["generation"]))
    print(f"results: {Path(args.out) / 'results.json'} (also results.csv, results.md)")


def _add_run_args(p) -> None:
    """The flags every benchmark takes: where to write, who edits, who judges."""
    p.add_argument("--out", required=True, help="output directory (resumable: images and judgements are kept)")
    p.add_argument("--model", default=None, help="earl editor directory (default: the bundled checkpoint)")
    p.add_argument("--no-generate", action="store_true", help="only judge/score images already in OUT/images")
    p.add_argument("--engine", default="earl", choices=["earl", "vllm"],
                   help="what samples the edits: earl's sampler, or vLLM over the editor's backbone "
                        "(earl.generate.vllm_engine: needs vllm installed; no classifier-free guidance)")
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
    add_sampling_args(p)


def register(ev) -> None:
    """One `earl eval` subcommand per row of `BENCHMARKS`, in the table's order."""
    for name, b in BENCHMARKS.items():
        p = ev.add_parser(name, help=b.help)
        for flag, kwargs in b.flags:
            p.add_argument(flag, **kwargs)
        _add_run_args(p)
        p.set_defaults(func=_cmd_benchmark)
