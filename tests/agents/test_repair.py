"""Critique and repair on a scripted failure: the failing points reach the decomposer, the corrective
step is carried out on the current image, and the repair is kept only when the verifier scores it higher."""

import pytest
from PIL import Image

from earl.agents.decomposer import DecomposeRequest, ScriptedDecomposer
from earl.agents.pipeline import AgentPipeline
from earl.agents.repair import RepairingPipeline
from earl.verify.base import RewardResult

RED, BLUE = (220, 40, 40), (40, 80, 220)


class PaintEditor:
    """Paints the whole image the colour its instruction names (red or blue); records the instructions."""

    def __init__(self):
        self.calls = []

    def edit(self, images, instructions, temperature=0.0, seeds=None):
        self.calls += instructions
        return [Image.new("RGB", (8, 8), BLUE if "blue" in ins else RED) for ins in instructions]


class WantsBlue:
    """Passes a blue image; on any other it fails the point 'Is the image blue?'."""

    name = "scripted"

    def __init__(self):
        self.seen = 0

    def score(self, requests):
        self.seen += len(requests)
        out = []
        for r in requests:
            blue = r.edited.getpixel((0, 0)) == BLUE
            out.append(RewardResult(1.0 if blue else 0.5, principles=[
                {"question": "Is the image blue?", "category": "instruction", "passed": blue, "reason": ""},
                {"question": "Are the shapes cleanly drawn?", "category": "quality", "passed": True, "reason": ""}]))
        return out


def _decomposer(asked):
    def reply(req: DecomposeRequest) -> str:
        asked.append(dict(req.meta))
        if req.meta.get("critique"):  # the corrective step, written from the failing points
            return "recolour | the image | blue" if "Is the image blue?" in req.meta["critique"] else "recolour | it | red"
        return "recolour | the image | red"  # the first plan gets it wrong
    return ScriptedDecomposer(reply)


def test_a_failing_point_becomes_a_corrective_step_that_is_kept():
    asked, editor, judge = [], PaintEditor(), WantsBlue()
    pipe = RepairingPipeline(AgentPipeline(_decomposer(asked), editor), judge, repairs=2)
    src = Image.new("RGB", (8, 8), "white")
    (res,) = pipe.run([DecomposeRequest(src, "Make it blue.", meta={"id": "s1"})])
    assert res.images[0].getpixel((0, 0)) == BLUE and res.repairs == 1
    assert asked[1] == {"id": "s1", "critique": ["Is the image blue?"]}  # the failing point, not the passing one
    assert len(editor.calls) == 2 and "blue" in editor.calls[1]  # the corrective step, on the current image
    assert res.editor_calls == 2 and res.check_calls == judge.seen == 2  # one judgement before, one after


def test_a_repair_that_scores_no_higher_is_dropped_and_the_rounds_are_capped():
    class NoBetter(WantsBlue):
        def score(self, requests):
            self.seen += len(requests)
            return [RewardResult(0.5, principles=[{"question": "Is the image blue?", "category": "instruction",
                                                   "passed": False, "reason": ""}]) for _ in requests]

    asked, editor, judge = [], PaintEditor(), NoBetter()
    pipe = RepairingPipeline(AgentPipeline(_decomposer(asked), editor), judge, repairs=3)
    (res,) = pipe.run([DecomposeRequest(Image.new("RGB", (8, 8)), "Make it blue.", meta={"id": "s"})])
    first_image = res.steps[0].image
    assert res.repairs == 0 and res.images[0] is first_image  # the plan's own image is kept
    assert len(editor.calls) == 1 + 3 and res.editor_calls == 4 and res.check_calls == 1 + 3


@pytest.mark.slow
def test_the_learned_loop_from_pretrained_edits_with_repairs_and_reads_no_answer():
    """`AgentPipeline.from_pretrained(verifier="learned")`: the bundled parts, outcome votes, the refreshed
    reward model on written principles, one repair round; one call edits an image given only the image
    and the instruction, and counts its editor and verifier calls."""
    from earl.agents.firewall import pipeline_reads_answer
    from earl.shapes.dataset import generate_samples
    from earl.shapes.render import render

    s = next(iter(generate_samples("complex", 1, 5, part="test")))
    pipe = AgentPipeline.from_pretrained(verifier="learned")
    assert isinstance(pipe, RepairingPipeline) and pipe.repairs == 1 and not pipeline_reads_answer(pipe)
    result = pipe(render(s.source_scene), s.instruction)
    assert result.plan is not None and result.images[0].size == render(s.source_scene).size
    assert result.editor_calls >= len(result.plan) and result.check_calls >= 1
