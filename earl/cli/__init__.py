"""The `earl` command: one subcommand per job, each a thin wrapper over a library function.

Each verb has its module here (`earl.cli.data`, `earl.cli.train`, ...) with its handlers and a
`register(subparsers)` that adds its subcommands. User errors (`EarlError`) print one line and exit
with status 2; anything else is a bug and keeps its traceback. Handlers import what loads torch (or
another heavy package) inside themselves, so `earl --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys

from earl.cli import (
    agent,
    app,
    bench,
    checkpoint,
    convert,
    data,
    demo,
    edit,
    evaluate,
    judge,
    plot,
    serve,
    study,
    train,
)
from earl.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from earl.errors import EarlError

# the verbs in the order of `earl --help`
VERBS = (data, judge, train, edit, agent, evaluate, checkpoint, convert, demo, study, bench, plot, serve, app)


def build_parser() -> argparse.ArgumentParser:
    """The `earl` parser: each verb's module adds its own subcommands."""
    p = argparse.ArgumentParser(prog="earl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EarlError as e:
        print(f"earl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("earl: interrupted (outputs written so far are complete; re-run to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
