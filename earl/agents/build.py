"""One way to assemble an `AgentPipeline` from named options, shared by the CLI and `earl study`.

`AgentOptions` holds what a user picks (a step check and its tries, self-consistency votes, how many
sampled plans to carry out and who judges them); `build_agent_pipeline` turns it into objects. The
reasoning reward model is loaded once when it both checks steps and judges plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from earl.agents.checks import OracleStepCheck, VerifierStepCheck
from earl.agents.decomposer import GroundTruthDecomposer, VotingDecomposer
from earl.agents.editor import PipelineEditor
from earl.agents.pipeline import AgentPipeline, default_decomposer
from earl.agents.sequencer import SEQUENCERS
from earl.agents.unified import UnifiedDecomposer
from earl.errors import EarlError
from earl.verify.base import build_verifier

GROUND_TRUTH = "ground-truth"  # the decomposer name that reads the plan from the ShapesEdit program


@dataclass
class AgentOptions:
    check: str = "none"  # "none" | "oracle" | "rrm" | "learned": verify each step and resample a failing one
    attempts: int = 4  # with a check: tries per step (best-of-k)
    step_temperature: float = 1.0  # with a check: temperature of resampled steps
    rrm: str = "checkpoints/shapes-rrm-lenient"  # the reasoning reward model (step check or plan judge)
    rrm_threshold: float = 0.9  # E[points]/10 a step or a final image needs to pass the RRM
    plan_votes: int = 0  # self-consistency: also sample K plans (0: the greedy plan alone)
    plan_temperature: float = 1.0
    plans: int = 1  # with plan_votes and plan_judge: carry out up to M candidate plans
    plan_judge: str | None = None  # "oracle" | "rrm" | "learned": judges the final image against the whole instruction
    # with "learned": the principle writer (`earl.rrm.writer`) whose points the reward model judges, in
    # place of the points `rrm` takes from the scene graphs
    writer: str | None = None
    sequencer: str = "keep"
    fallback: bool = False  # a failed plan gives the editor the instruction itself

    def __post_init__(self):
        """ValueError, so that a recipe's bad agent options are reported with its file and field (the CLI
        reports them as a usage error)."""
        if self.check not in ("none", "oracle", "rrm", "learned"):
            raise ValueError(f"check must be none, oracle, rrm or learned, got {self.check!r}")
        if self.plan_judge not in (None, "oracle", "rrm", "learned"):
            raise ValueError(f"plan_judge must be oracle, rrm or learned, got {self.plan_judge!r}")
        if "learned" in (self.check, self.plan_judge) and not self.writer:
            raise ValueError("the learned verifier needs writer: a principle writer directory (earl.train.writer)")
        if (self.plans > 1) != (self.plan_judge is not None) or (self.plans > 1 and not self.plan_votes):
            raise ValueError("choosing among sampled plans by judging the results needs plans M (> 1), plan_votes K "
                             "and plan_judge together (CLI: --plans, --plan-votes, --plan-judge)")
        if self.sequencer not in SEQUENCERS:
            raise ValueError(f"sequencer must be one of {', '.join(SEQUENCERS)}, got {self.sequencer!r}")


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
    learned = (build_verifier("learned", model_path=o.rrm, writer=o.writer)
               if "learned" in (o.check, o.plan_judge) else None)
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
    return AgentPipeline(dec, PipelineEditor.from_pretrained(editor), sequencer=SEQUENCERS[o.sequencer](),
                         check=check, attempts=o.attempts if check else 1, temperature=o.step_temperature,
                         fallback=o.fallback, seed=seed, plans=o.plans, plan_judge=judge, plan_threshold=threshold)
