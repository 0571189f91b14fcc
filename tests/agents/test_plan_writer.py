"""The plan writer: a decomposer's plan applied to the scene parsed from the source image gives the points."""

import pytest

from earl.agents.build import AgentOptions, build_writer
from earl.agents.decomposer import ScriptedDecomposer, read_plan
from earl.agents.firewall import reads_answer
from earl.agents.plan_writer import PlanPrincipleWriter
from earl.agents.shapes import program_plan
from earl.errors import EarlError
from earl.rrm.principles import shapes_points
from earl.rrm.writer import PrincipleFailure
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render
from earl.verify.base import EditRequest, RewardResult, build_verifier


def _samples(n=12):
    return [s for split in ("simple", "complex") for s in generate_samples(split, n, 3, part="test")]


def _program_writer(samples, seed=0):
    """A writer whose scripted decomposer answers each instruction with its sample's own program."""
    plans = {s.instruction: program_plan(s.source_scene, s.program).text() for s in samples}
    return PlanPrincipleWriter(ScriptedDecomposer(lambda r: plans[r.instruction]), seed=seed)


def test_the_programs_plan_writes_the_exact_points_of_source_and_target():
    samples = _samples()
    for seed in (0, 5):
        w = _program_writer(samples, seed)
        got = w.write([render(s.source_scene) for s in samples], [s.instruction for s in samples])
        for s, points in zip(samples, got):
            assert points == shapes_points(s.source_scene, s.target_scene, seed=w.point_seed(s.instruction)), s.id
    assert _program_writer(samples, 0).point_seed("x") != _program_writer(samples, 5).point_seed("x")


@pytest.mark.parametrize("plan, kind, detail", [
    ("", "plan", "empty"),
    ("paint | the circle", "plan", "truncated"),
    ("paint | the circle | red", "plan", "unknown_action"),
    ("remove | the purple hexagon | nothing", "unapplicable", "purple hexagon"),
    ("add | a large red circle | row 9, column 1", "unapplicable", "outside"),
    ("background | the background | {bg}", "unapplicable", "changes nothing"),
])
def test_a_plan_that_does_not_read_or_apply_is_a_named_failure(plan, kind, detail):
    s = _samples(1)[0]
    w = PlanPrincipleWriter(ScriptedDecomposer([plan.format(bg=s.source_scene.background)]))
    [got] = w.write([render(s.source_scene)], [s.instruction])
    assert isinstance(got, PrincipleFailure) and got.kind == kind and detail in (got.detail + got.raw)


class RecordingDecomposer:
    """The program plans of `samples`, keyed by instruction, recording every request it is given."""

    def __init__(self, samples):
        self.plans = {s.instruction: program_plan(s.source_scene, s.program).text() for s in samples}
        self.requests = []

    def decompose(self, requests):
        self.requests += requests
        return [read_plan(self.plans[r.instruction]) for r in requests]


def test_the_writer_reads_no_answer_even_through_the_learned_verifier(tmp_path, tiny_editor):
    samples = _samples(3)
    dec = RecordingDecomposer(samples)
    writer = PlanPrincipleWriter(dec)
    assert not reads_answer(writer)
    tiny_editor.save_pretrained(tmp_path / "rrm")

    def scored(meta_of):
        v = build_verifier("learned", model_path=str(tmp_path / "rrm"), writer=writer, max_new_tokens=4)
        reqs = [EditRequest(render(s.source_scene), s.instruction, render(s.target_scene), meta=meta_of(k))
                for k, s in enumerate(samples)]
        return [r.to_dict() for r in v.score(reqs)]

    honest = scored(lambda k: {"source_scene": samples[k].source_scene.to_dict(),
                               "target_scene": samples[k].target_scene.to_dict()})
    wrong = scored(lambda k: {"source_scene": samples[k - 1].source_scene.to_dict(),  # another sample's answer
                              "target_scene": samples[k - 1].target_scene.to_dict(), "program": "nonsense"})
    assert honest == wrong
    assert dec.requests and all(r.meta == {} for r in dec.requests)


def test_the_plan_writer_is_named_where_a_writer_is():
    assert AgentOptions(check="learned", writer="plan").writer == "plan"
    with pytest.raises(ValueError, match="plan:DIR"):
        AgentOptions(check="learned", writer="plan:")
    assert build_writer("some/writer/dir") == "some/writer/dir"  # a learned writer, loaded by the verifier
    with pytest.raises(EarlError, match="not a decomposer directory"):
        build_writer("plan:no/such/decomposer")


class FailingVerifier:
    name = "learned"

    def __init__(self, error):
        self.error = error

    def score(self, requests):
        return [RewardResult.failure(self.error) for _ in requests]


def test_a_step_whose_principles_cannot_be_written_is_not_resampled():
    from earl.agents.checks import VerifierStepCheck
    from earl.agents.plan import Step
    from earl.rrm.learned import PRINCIPLES_FAILED

    s = _samples(1)[0]
    im, step = render(s.source_scene), Step("remove", "the shape in row 1, column 1", "nothing")
    [written] = VerifierStepCheck(FailingVerifier(f"{PRINCIPLES_FAILED} unapplicable (no such object)")).check(
        [im], [step], [im])
    [verdict] = VerifierStepCheck(FailingVerifier("unparseable verdicts")).check([im], [step], [im])
    assert not written.passed and not written.retry  # the same principles would fail on every resample
    assert not verdict.passed and verdict.retry  # a new edit gets new verdicts
