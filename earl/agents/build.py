"""One way to assemble an `AgentPipeline` from named options, shared by the CLI and `earl study`.

`AgentOptions` (`earl.agents.options`) holds what a user picks (a step check and its tries,
self-consistency votes, how many sampled plans to carry out and who judges them);
`build_agent_pipeline` turns it into objects. The reasoning reward model is loaded once when it both
checks steps and judges plans.
"""

from __future__ import annotations

from pathlib import Path

from earl.agents.checks import OracleStepCheck, VerifierStepCheck
from earl.agents.decomposer import GroundTruthDecomposer, VotingDecomposer
from earl.agents.editor import PipelineEditor
from earl.agents.options import AgentOptions
from earl.agents.pipeline import AgentPipeline, default_decomposer
from earl.agents.sequencer import SEQUENCERS
from earl.agents.unified import UnifiedDecomposer
from earl.errors import EarlError
from earl.verify.base import build_verifier

GROUND_TRUTH = "ground-truth"  # the decomposer name that reads the plan from the ShapesEdit program


def build_agent_pipeline(decomposer: str | None, editor: str | None, options: AgentOptions,
                         seed: int = 0) -> AgentPipeline:
    """The pipeline for a decomposer directory (None: the bundled one; "ground-truth": the program's own
    plan, ShapesEdit only) and an editor directory (None: the bundled editor)."""
    o = options
    if decomposer == GROUND_TRUTH:
        dec = GroundTruthDecomposer()
    else:
        path = Path(decomposer or default_decomposer())
        if not path.is_dir():
            raise EarlError(f"decomposer {path}: not a directory")
        dec = UnifiedDecomposer.from_pretrained(path)
        if o.plan_votes:
            dec = VotingDecomposer(dec, o.plan_votes, o.plan_temperature, seed=seed)
    rrm = build_verifier("rrm", model_path=o.rrm, expected_points=True) if "rrm" in (o.check, o.plan_judge) else None
    check = None
    if o.check == "oracle":
        check = OracleStepCheck()
    elif o.check == "rrm":
        check = VerifierStepCheck(rrm, o.rrm_threshold)
    judge, threshold = None, 1.0
    if o.plan_judge == "oracle":
        judge = build_verifier("oracle", reward="success")
    elif o.plan_judge == "rrm":
        judge, threshold = rrm, o.rrm_threshold
    return AgentPipeline(dec, PipelineEditor.from_pretrained(editor), sequencer=SEQUENCERS[o.sequencer](),
                         check=check, attempts=o.attempts if check else 1, temperature=o.step_temperature,
                         fallback=o.fallback, seed=seed, plans=o.plans, plan_judge=judge, plan_threshold=threshold)
