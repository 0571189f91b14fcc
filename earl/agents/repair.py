"""Critique and repair: the verifier's failing points become the next step.

After an `AgentPipeline` has carried out its plan, a verifier that judges by principles (the
`learned` reasoning reward model, or any verifier whose `RewardResult.principles` carry verdicts)
judges each final image against the whole instruction. An image it fails is critiqued: its failing
questions go to the decomposer with the original instruction and the current image
(`DecomposeRequest.meta["critique"]`), which writes a corrective plan; the plan is carried out on the
current image and judged again. The repaired image is kept only when the verifier scores it higher,
so a repair never undoes what the plan achieved; at most `repairs` rounds, each costing editor and
verifier calls that are counted in the result (as EditThinker and GenArtist critique, then refine).
"""

from __future__ import annotations

from earl.agents.decomposer import DecomposeRequest
from earl.errors import EarlError
from earl.io import load_image
from earl.verify.base import EditRequest, RewardResult


def failing_points(result) -> list[str]:
    """The questions a verifier's `RewardResult` failed, in order."""
    return [p["question"] for p in (result.principles or []) if not p.get("passed", True)]


class RepairingPipeline:
    """`pipeline` (an `earl.agents.pipeline.AgentPipeline`, which builds this wrapper) followed by up to `repairs` critique-and-repair rounds judged by `judge`."""

    def __init__(self, pipeline, judge, repairs: int = 1, threshold: float = 0.9):
        if repairs < 0:
            raise ValueError(f"repairs must be >= 0, got {repairs}")
        self.pipeline, self.judge, self.repairs, self.threshold = pipeline, judge, repairs, threshold
        self.decomposer, self.check, self.plan_judge = pipeline.decomposer, pipeline.check, pipeline.plan_judge
        self.editor = pipeline.editor
        self.attempts, self.temperature, self.plans = pipeline.attempts, pipeline.temperature, pipeline.plans

    def __call__(self, image, instruction: str):
        """One edit, as `AgentPipeline.__call__` does it, then its repair rounds."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise EarlError("instruction is empty")
        return self.run([DecomposeRequest(load_image(image), instruction)])[0]

    def run(self, requests: list[DecomposeRequest]) -> list:
        results = self.pipeline.run(requests)
        for r in results:
            r.repairs = 0
        verdicts = self._judge(requests, results)
        for _ in range(self.repairs):
            todo = [i for i, v in enumerate(verdicts) if not v.failed and v.reward < self.threshold
                    and failing_points(v) and results[i].failure is None]
            if not todo:
                break
            asks = [DecomposeRequest(results[i].images[0], requests[i].instruction,
                                     meta={"id": requests[i].meta.get("id"), "critique": failing_points(verdicts[i])})
                    for i in todo]
            fixes = self.pipeline._carry_out(asks, self.decomposer.decompose(asks))
            judged = self._judge([requests[i] for i in todo], fixes)
            for i, fix, v in zip(todo, fixes, judged):
                r = results[i]
                r.editor_calls += fix.editor_calls
                r.check_calls += fix.check_calls  # its steps' checks and the judgement above
                if fix.failure is None and not v.failed and v.reward > verdicts[i].reward:
                    r.images, r.steps, r.repairs = fix.images, r.steps + fix.steps, r.repairs + 1
                    verdicts[i] = v
        return results

    def _judge(self, requests, results):
        """The judge's verdict on each final image (a failed result is judged as failed, uncalled)."""
        ok = [i for i, r in enumerate(results) if r.failure is None]
        got = self.judge.score([EditRequest(requests[i].image, requests[i].instruction, results[i].images[0],
                                            meta={"id": requests[i].meta.get("id")}) for i in ok])
        out = [None] * len(results)
        for i, v in zip(ok, got):
            out[i] = v
            results[i].check_calls += 1
        return [v if v is not None else RewardResult.failure("the plan failed") for v in out]
