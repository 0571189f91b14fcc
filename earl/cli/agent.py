"""`earl agent`: multi-agent editing (decomposer -> sequencer -> editor), and the agent flags that
`earl eval shapes --agent` shares, one per `AgentOptions` field."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from earl.agents.options import DECODING_FIELDS, AgentOptions
from earl.cli.common import add_field_flags, add_schedule_args, check_image_out, named_paths, schedule_flags
from earl.errors import EarlError
from earl.io import atomic_write_text, load_image, save_image
from earl.viz import image_grid


def add_agent_args(p) -> None:
    """One flag per `AgentOptions` field but the editor's decoding ones (`--schedule`, `--window`), which
    every command that edits has already (`add_schedule_args`)."""
    add_field_flags(p, AgentOptions, [f.name for f in fields(AgentOptions) if f.name not in DECODING_FIELDS])


def agent_options(args) -> AgentOptions:
    """The options the agent flags hold; a bad combination is a usage error."""
    schedule_flags(args)  # named by its flags, before the options name their fields
    try:
        return AgentOptions(**{f.name: getattr(args, f.name) for f in fields(AgentOptions)})
    except ValueError as e:
        raise EarlError(f"agent options: {e}") from None


def agent_pipeline(decomposer: str | None, editor: str | None, args):
    options = agent_options(args)
    # lazy: the decomposer, the editor and the reward model load torch and transformers
    from earl.agents.pipeline import build_agent_pipeline

    return build_agent_pipeline(decomposer, editor, options, seed=getattr(args, "seed", 0))


def _cmd_edit(args) -> None:
    out = check_image_out(args.out)
    agent_options(args)  # a bad option is a usage error before the image or any model loads
    image = load_image(args.image)
    pipe = agent_pipeline(args.decomposer, args.model, args)
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


def _cmd_compare(args) -> None:
    # lazy: the run comparison reads the test set with datasets and pyarrow
    from earl.agents.evaluate import compare_runs, format_comparison

    runs = named_paths(args.runs, "run", "LABEL=DIR or DIR (an `earl eval shapes` output directory)", name_optional=True)
    for d in runs.values():
        if not (Path(d) / "results.json").is_file():
            raise EarlError(f"{d}: no results.json (expected an `earl eval shapes` output directory)")
    table = format_comparison(compare_runs(runs, base=args.base))
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
        print(f"wrote {args.out}")


def register(sub) -> None:
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
    add_agent_args(ae)
    add_schedule_args(ae)
    ae.set_defaults(func=_cmd_edit)
    ac = ag.add_parser("compare", help="table of `earl eval shapes` runs on one test set, with paired differences")
    ac.add_argument("runs", nargs="+", metavar="[LABEL=]DIR")
    ac.add_argument("--base", default=None, help="the run every other is paired against (its label)")
    ac.add_argument("--out", default=None, help="also write the markdown table here")
    ac.set_defaults(func=_cmd_compare)
