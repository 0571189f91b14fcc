"""What several verbs' handlers share: exit statuses, argument checks that fail before any model
loads, and the sampling flags of the commands that edit."""

from __future__ import annotations

import os
import typing
from dataclasses import fields
from pathlib import Path

from earl.agents.options import DECODING_FIELDS, AgentOptions, schedule_problem
from earl.errors import EarlError
from earl.io import IMAGE_FORMATS, image_format

EXIT_USAGE = 2  # an EarlError: bad input, reported in one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT (128 + 2)


def named_paths(items: list[str] | None, flag: str, expected: str, name_optional: bool = False) -> dict[str, str]:
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


def check_image_out(value: str, flag: str = "--out") -> Path:
    """An output image path that can be written, checked before any model loads: not a directory,
    an image extension (`earl.io.IMAGE_FORMATS`), and a writable nearest existing parent."""
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


def add_sampling_args(p) -> None:
    """How an editor samples (`earl edit`, `earl eval shapes`, the benchmark runners)."""
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    add_schedule_args(p)


def _flag_type(hint):
    """The argparse type of a field's annotation (`str | None` -> str)."""
    kinds = [k for k in typing.get_args(hint) if k is not type(None)]
    return kinds[0] if kinds else hint


def add_field_flags(p, cls, names) -> None:
    """One flag per named field of dataclass `cls` (`step_temperature` -> `--step-temperature`), its type,
    default, choices, metavar and help taken from the field, so an option is declared once."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = {k: v for k, v in f.metadata.items() if v is not None}
        kind = _flag_type(hints[f.name])
        if kind is bool:
            assert f.default is False, f"{f.name}: a store_true flag needs the default False"
            p.add_argument(flag, action="store_true", **shown)
        else:
            p.add_argument(flag, type=kind, default=f.default, **shown)


def add_schedule_args(p) -> None:
    """`--schedule` and `--window`: the editor's decoding schedule, declared once as `AgentOptions` fields
    (the agent's editor takes the same two)."""
    add_field_flags(p, AgentOptions, DECODING_FIELDS)


def schedule_flags(args) -> tuple[str, int | None]:
    """(schedule, window) from `--schedule` / `--window`, checked before any model loads; a bad pair
    is a usage error naming the flags."""
    problem = schedule_problem(args.schedule, args.window, ("--schedule", "--window"))
    if problem is not None:
        raise EarlError(problem)
    return args.schedule, args.window


def format_generation(g: dict | None) -> str:
    """One line for results.json's `generation` (`earl.generate.GenerationCost`)."""
    if not g or not g.get("images"):
        return "forward passes: none counted (no image generated in this run)"
    schedule = g["schedule"] + (f" window {g['window']}" if g.get("window") else "")
    return (f"forward passes: {g['forward_passes']} for {g['images']} images ({g['forward_passes_per_image']:.1f} "
            f"per image), {g['tokens_per_pass']:.2f} tokens per pass, schedule {schedule}")
