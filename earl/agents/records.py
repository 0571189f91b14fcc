"""Summaries of agent edit records: the JSON that `AgentResult.to_dict()` writes for each edit (plan,
steps, failure, fallback, editor and check calls), as `earl eval shapes --agent` and the benchmark
runners keep them on disk. Kept apart from the pipeline so that a report reads records without
loading the models."""

from __future__ import annotations

from collections import Counter


def summarise_records(records: list[dict]) -> dict:
    """What a set of `AgentResult.to_dict()` records cost and how their plans failed: failures by kind,
    fallbacks, and steps, editor calls and check calls per edit (the figures every agent report gives)."""
    n = max(1, len(records))
    return {
        "plan_failures": dict(Counter(r["failure"] for r in records if r["failure"])),
        "fallbacks": sum(bool(r["fallback"]) for r in records),
        "steps_per_edit": sum(r["n_steps"] for r in records) / n,
        "editor_calls_per_edit": sum(r["editor_calls"] for r in records) / n,
        "check_calls_per_edit": sum(r["check_calls"] for r in records) / n,
        "plans_tried_per_edit": sum(r.get("plans_tried", 1) for r in records) / n,
        "repairs_kept_per_edit": sum(r.get("repairs", 0) for r in records) / n,
    }
