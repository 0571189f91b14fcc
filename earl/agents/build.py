"""One way to assemble an `AgentPipeline` from named options, shared by `AgentPipeline.from_pretrained`,
the CLI and `earl study`.

`AgentOptions` (`earl.agents.options`) holds what a user picks (a step check and its tries,
self-consistency votes, how many sampled plans to carry out and who judges them, the sequencer);
`agent_parts` turns it into the pipeline's parts. The reasoning reward model is loaded once when it both
checks steps and judges plans. This module does not import the pipeline, so that the pipeline can build
itself from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from earl.agents.checks import OracleStepCheck, VerifierStepCheck
from earl.agents.decomposer import GroundTruthDecomposer, VotingDecomposer
from earl.agents.editor import PipelineEditor
from earl.agents.options import AgentOptions
from earl.agents.outcomes import OutcomeVotingDecomposer
from earl.agents.plan_writer import PLAN_WRITER, PlanPrincipleWriter, plan_writer_dir
from earl.agents.sequencer import SEQUENCERS, ChatSequencer
from earl.agents.unified import UnifiedDecomposer
from earl.errors import EarlError
from earl.hub import resolve_model
from earl.rrm.writer import UnifiedPrincipleWriter
from earl.verify.base import build_verifier

GROUND_TRUTH = "ground-truth"  # the decomposer name that reads the plan from the ShapesEdit program
BUNDLED_DECOMPOSER = "shapes-decomposer"
_CHECKPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "checkpoints")


def default_decomposer() -> str:
    """$EARL_DECOMPOSER, else `checkpoints/shapes-decomposer` in the source tree."""
    return os.environ.get("EARL_DECOMPOSER") or os.path.normpath(os.path.join(_CHECKPOINTS, BUNDLED_DECOMPOSER))


def build_sequencer(options: AgentOptions):
    """The sequencer `options.sequencer` names (the chat one over `sequencer_base_url` / `sequencer_model`)."""
    if options.sequencer == "chat":
        return ChatSequencer.from_options(base_url=options.sequencer_base_url, model=options.sequencer_model)
    return SEQUENCERS[options.sequencer]()


def build_writer(spec: str, device: str = "cpu"):
    """The principle writer `spec` names: `plan` (the plan writer over the bundled decomposer),
    `plan:DIR` (over that decomposer), else a learned writer's directory, given on as is
    (`LearnedRRMVerifier` loads it)."""
    path = plan_writer_dir(spec)
    if path is None:
        return spec
    path = resolve_model(path or default_decomposer(), what="decomposer")
    if not path.is_dir():
        raise EarlError(f"writer {spec}: {path} is not a decomposer directory (train one with "
                        "`earl train decomposer-sft`)")
    return PlanPrincipleWriter.from_pretrained(path, device=device)


def load_writer(spec: str, device: str = "cpu"):
    """`build_writer`, with a learned writer's directory loaded too (for callers that write principles
    themselves rather than hand the writer to `LearnedRRMVerifier`)."""
    writer = build_writer(spec, device)
    return UnifiedPrincipleWriter.from_pretrained(writer, device=device) if isinstance(writer, str) else writer


def _rrm_dir(path: str) -> str:
    """The reward model's directory. A bundled model's name (`checkpoints/NAME`, relative to the
    repository root) also resolves against the source tree, so that the Python API finds it from any
    directory."""
    bundled = os.path.normpath(os.path.join(_CHECKPOINTS, Path(path).name))
    if Path(path).parent == Path("checkpoints") and not Path(path).is_dir() and Path(bundled).is_dir():
        return bundled
    return path


def agent_parts(decomposer: str | None, editor: str | None, options: AgentOptions, seed: int = 0,
                device: str = "cpu") -> dict:
    """The keyword arguments of `AgentPipeline` for a decomposer directory (None: the bundled one;
    "ground-truth": the program's own plan, ShapesEdit only) and an editor directory (None: the bundled
    editor)."""
    o = options
    if decomposer == GROUND_TRUTH:
        dec = GroundTruthDecomposer()
    else:
        path = resolve_model(decomposer or default_decomposer(), what="decomposer")  # a directory or a Hub id
        if not path.is_dir():
            raise EarlError(f"decomposer {path}: not a directory (train one with `earl train decomposer-sft`)")
        dec = UnifiedDecomposer.from_pretrained(path, device=device)
        if o.plan_votes:
            voter = OutcomeVotingDecomposer if o.plan_vote_by == "outcome" else VotingDecomposer
            dec = voter(dec, o.plan_votes, o.plan_temperature, seed=seed)
    rrm = None
    if "rrm" in (o.check, o.plan_judge):
        rrm = build_verifier("rrm", model_path=_rrm_dir(o.rrm), expected_points=True, device=device)
    writer = None
    if "learned" in (o.check, o.plan_judge):
        # the bundled plan writer over an outcome-voting decomposer shares it, so that the points judged
        # are those of the plan the agent carries out (same samples: they are seeded by the instruction)
        shared = o.writer == PLAN_WRITER and decomposer is None and isinstance(dec, OutcomeVotingDecomposer)
        writer = PlanPrincipleWriter(dec) if shared else build_writer(o.writer, device)
    learned = build_verifier("learned", model_path=_rrm_dir(o.rrm), writer=writer) if writer is not None else None
    check = None
    if o.check == "oracle":
        check = OracleStepCheck()
    elif o.check in ("rrm", "learned"):
        check = VerifierStepCheck(rrm if o.check == "rrm" else learned, o.rrm_threshold)
    judge, threshold = None, 1.0
    if o.plan_judge == "oracle":
        judge = build_verifier("oracle", reward="success")
    elif o.plan_judge in ("rrm", "learned"):
        judge, threshold = (rrm if o.plan_judge == "rrm" else learned), o.rrm_threshold
    return dict(decomposer=dec, editor=PipelineEditor.from_pretrained(editor, device=device, schedule=o.schedule,
                                                                  window=o.window),
                sequencer=build_sequencer(o), check=check, attempts=o.attempts if check else 1,
                temperature=o.step_temperature, fallback=o.fallback, seed=seed, plans=o.plans, plan_judge=judge,
                plan_threshold=threshold)
