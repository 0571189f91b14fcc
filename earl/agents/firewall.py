"""What the agent may read at test time: the image and the instruction, never the answer.

A ShapesEdit row also carries the answer: the target image, both scene graphs, the edit program and
the editor's reasoning text. Only the oracle may read them (to score, to label training data) and
arms named as oracle arms: the ground-truth decomposer, the oracle as plan judge, and the reasoning
reward model given its principles from the scene graphs (`RRMVerifier` reads them whenever a request
carries them). `agent_request` gives a pipeline the answer only when one of its parts is such a
reader (`reads_answer`); every other pipeline gets the source image, the instruction and the
sample id (the seed of its sampling), so nothing it does can depend on the answer. A test swaps
every sample's answer for another's and sees byte-identical outputs (tests/agents/test_firewall.py).
"""

from __future__ import annotations

from earl.agents.decomposer import DecomposeRequest

ANSWER_FIELDS = ("target_image", "source_scene", "target_scene", "program", "reasoning")
_ANSWER_META = ("program", "source_scene", "target_scene")  # what an answer reader gets in `meta`


def reads_answer(part) -> bool:
    """Whether a decomposer or plan judge reads the answer. A part says so with `reads_answer`; the
    oracle, the ground-truth decomposer and the reasoning reward model with exact principles (`rrm`,
    whose class predates the attribute) are readers by name."""
    if part is None:
        return False
    flag = getattr(part, "reads_answer", None)
    if flag is not None:
        return bool(flag)
    return getattr(part, "name", None) in ("oracle", "rrm", "ground_truth")


def pipeline_reads_answer(pipeline) -> bool:
    """Whether any part of an `AgentPipeline` that sees the requests reads the answer. Step checks
    see only (image before, step, image after), never a request, so they are not asked."""
    decomposer = getattr(pipeline, "decomposer", None)
    parts = [decomposer, getattr(decomposer, "base", None), getattr(pipeline, "plan_judge", None),
             getattr(pipeline, "judge", None)]  # a critique-and-repair round's judge (`earl.agents.repair`)
    return any(reads_answer(p) for p in parts)


def agent_request(row: dict, answer: bool) -> DecomposeRequest:
    """A dataset row as the agent sees it: (source image, instruction, id), plus the answer's scene
    graphs and program only for a pipeline that reads the answer (an oracle arm)."""
    meta = {"id": row["id"]}
    if answer:
        meta.update({k: row[k] for k in _ANSWER_META})
    return DecomposeRequest(row["source_image"], row["instruction"], meta=meta)
