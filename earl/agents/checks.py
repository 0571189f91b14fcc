"""Step checks for the closed loop: did this step's edit do what the step says?

`StepCheck.check(befores, steps, afters) -> list[StepVerdict]` (passed, a score to rank attempts
by, the reason). The pipeline resamples a step whose check fails, up to k attempts (best-of-k per
step). Two checks:

- `OracleStepCheck` (ShapesEdit): the scene before the step is read from the image by the
  oracle's parser, the step is applied to it (`earl.agents.shapes.step_to_op`) and the edited image
  judged against the result. A step whose subject is not in the image is `unapplicable`: no
  resample can fix that, so it is not retried.
- `VerifierStepCheck`: any `earl.verify` verifier on (image before, step instruction, image
  after), passing at reward >= threshold: the reasoning reward model (E[points]), a VIEScore judge.
  On ShapesEdit the RRM's ten principles come from the step's scene graphs (before: parsed from the
  image; after: the step applied), as the RRM's reward does in training; its verdicts come from the
  model reading the image tokens. On real data a chat LLM writes the principles. With the learned
  verifier a principle writer writes them from (image before, step instruction); a step whose
  principles cannot be written is not retried (they would fail again on every resample).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from earl.agents.plan import PlanError, Step, step_instruction
from earl.agents.shapes import step_to_op
from earl.rrm.learned import PRINCIPLES_FAILED
from earl.shapes.oracle import judge, parse_scene
from earl.verify.base import EditRequest


@dataclass
class StepVerdict:
    passed: bool
    score: float  # higher is better; ranks the attempts when none passes
    reason: str = ""
    retry: bool = True  # False when resampling cannot help (the step itself does not apply)


def _scene_pair(before: Image.Image, step: Step):
    """(scene read from `before`, the scene the step should produce) or PlanError."""
    scene = parse_scene(before).scene
    return scene, step_to_op(step, scene).apply(scene)


class OracleStepCheck:
    name = "oracle"

    def check(self, befores, steps, afters) -> list[StepVerdict]:
        out = []
        for before, step, after in zip(befores, steps, afters):
            try:
                scene, expected = _scene_pair(before, step)
            except PlanError as e:
                out.append(StepVerdict(False, 0.0, str(e), retry=False))
                continue
            j = judge(scene, expected, after)
            failed = [p.question for p in j.principles if not p.passed]
            out.append(StepVerdict(j.success, j.overall, "; ".join(failed[:3])))
        return out


class VerifierStepCheck:
    def __init__(self, verifier, threshold: float = 0.9):
        self.verifier, self.threshold = verifier, threshold
        self.name = getattr(verifier, "name", "verifier")

    def check(self, befores, steps, afters) -> list[StepVerdict]:
        reqs, verdicts = [], [None] * len(steps)
        for i, (before, step, after) in enumerate(zip(befores, steps, afters)):
            meta = {}
            if self.name == "rrm":
                try:
                    scene, expected = _scene_pair(before, step)
                    meta = {"source_scene": scene.to_dict(), "target_scene": expected.to_dict(), "id": f"step{i}"}
                except PlanError as e:
                    verdicts[i] = StepVerdict(False, 0.0, str(e), retry=False)
                    continue
            reqs.append((i, EditRequest(before, step_instruction(step), after, meta=meta)))
        for (i, _), r in zip(reqs, self.verifier.score([r for _, r in reqs])):
            if r.failed:
                # principles are written once per (image before, step): when they fail, every resample fails too
                verdicts[i] = StepVerdict(False, 0.0, f"judge failed: {r.error}",
                                          retry=not (r.error or "").startswith(PRINCIPLES_FAILED))
            else:
                verdicts[i] = StepVerdict(r.reward >= self.threshold, float(r.reward), f"reward {r.reward:.3f}")
        return verdicts
