"""Self-consistency over plans (`VotingDecomposer`) and choosing among candidate plans by judging
their results (`AgentPipeline(plans=m, plan_judge=...)`)."""

import pytest
from PIL import Image

from earl.agents.decomposer import DecomposeRequest, VotingDecomposer, rank_plans, read_plan
from earl.agents.pipeline import AgentPipeline
from earl.errors import EarlError
from earl.verify.base import RewardResult

RED = "remove | the red circle | nothing"
BLUE = "remove | the blue circle | nothing"
TWO = "recolour | the red circle | blue ; remove | the square | nothing"


class SampledReplies:
    """A sampling decomposer with fixed replies: greedy text and the texts of its samples, per request
    id; records the seeds it was asked to sample with."""

    name = "replies"

    def __init__(self, greedy: dict, samples: dict):
        self.greedy, self.samples, self.seeds = greedy, samples, []

    def decompose(self, requests):
        return [read_plan(self.greedy[r.meta["id"]]) for r in requests]

    def sample(self, requests, n, temperature, seeds):
        self.seeds += seeds
        return [[read_plan(t) for t in self.samples[r.meta["id"]][:n]] for r in requests]


class PaintEditor:
    """Each instruction paints the image a colour derived from the text, so images tell plans apart."""

    def __init__(self):
        self.calls = 0

    def edit(self, images, instructions, temperature=0.0, seeds=None):
        self.calls += len(images)
        return [Image.new("RGB", (4, 4), (len(i) % 256, 0, 0)) for i in instructions]


class JudgeByPlan:
    """A plan judge that passes the final image of one plan: the one whose last step paints `ok_text`."""

    name = "scripted-judge"

    def __init__(self, rewards: dict[int, float]):
        self.rewards, self.calls = rewards, 0

    def score(self, requests):
        self.calls += len(requests)
        return [RewardResult(reward=self.rewards.get(r.edited.getpixel((0, 0))[0], 0.0)) for r in requests]


def _req(rid):
    return DecomposeRequest(Image.new("RGB", (4, 4)), "an edit", meta={"id": rid})


def test_rank_plans_counts_votes_ignores_failures_and_breaks_ties_for_greedy():
    ranked = rank_plans(read_plan(RED), [read_plan(BLUE), read_plan("garbage"), read_plan(BLUE), read_plan(RED)])
    assert [d.raw for d in ranked] == [RED, BLUE]  # 2 votes each: the greedy plan first
    ranked = rank_plans(read_plan(RED), [read_plan(BLUE)] * 3)
    assert [d.raw for d in ranked] == [BLUE, RED]
    # the same steps in another order are the same vote (order is the sequencer's business)
    swapped = "remove | the square | nothing ; recolour | the red circle | blue"
    assert len(rank_plans(read_plan(TWO), [read_plan(swapped)])) == 1
    failed = read_plan("")
    assert rank_plans(failed, [read_plan("x | y")]) == [failed]  # nothing parsed: the greedy failure


def test_voting_decomposer_keeps_the_majority_plan_with_seeds_from_request_ids():
    base = SampledReplies({"a": RED, "b": RED}, {"a": [BLUE, BLUE, RED, BLUE], "b": [RED, BLUE, RED, BLUE]})
    dec = VotingDecomposer(base, votes=4, temperature=0.7, seed=5)
    plans = dec.decompose([_req("a"), _req("b")])
    assert [p.raw for p in plans] == [BLUE, RED]
    first = list(base.seeds)
    dec.decompose([_req("b")])  # alone, or in another batch: the same seed for the same id
    assert base.seeds[-1] == first[1] and first[0] != first[1]


@pytest.mark.parametrize("kw", [dict(votes=0), dict(temperature=0.0)])
def test_voting_decomposer_refuses_settings_that_cannot_vote(kw):
    with pytest.raises(EarlError):
        VotingDecomposer(SampledReplies({}, {}), **{"votes": 4, "temperature": 1.0, **kw})


def test_plan_choice_tries_candidates_in_vote_order_until_the_judge_passes():
    # request a: greedy RED, samples favour BLUE -> BLUE first; the judge passes only RED's result
    # request b: the first candidate passes at once
    base = SampledReplies({"a": RED, "b": TWO}, {"a": [BLUE, BLUE], "b": [TWO, RED]})
    red_colour = len("Remove the red circle.")
    two_colour = len("Remove the square.")
    judge = JudgeByPlan({red_colour: 1.0, two_colour: 1.0})
    editor = PaintEditor()
    pipe = AgentPipeline(VotingDecomposer(base, votes=2), editor, plans=3, plan_judge=judge, plan_threshold=1.0)
    a, b = pipe.run([_req("a"), _req("b")])
    assert a.plan.text() == RED.replace(" ; ", "\n") and a.plans_tried == 2 and a.plan_reward == 1.0
    assert a.editor_calls == 2 and a.check_calls == 2  # both plans were carried out and judged
    assert b.plans_tried == 1 and b.editor_calls == 2 and b.check_calls == 1
    assert editor.calls == 4 and judge.calls == 3
    assert a.to_dict()["plans_tried"] == 2


def test_plan_choice_keeps_the_best_judged_plan_when_none_passes():
    base = SampledReplies({"a": RED}, {"a": [BLUE, BLUE]})
    judge = JudgeByPlan({len("Remove the red circle."): 0.6, len("Remove the blue circle."): 0.3})
    pipe = AgentPipeline(VotingDecomposer(base, votes=2), PaintEditor(), plans=4, plan_judge=judge, plan_threshold=1.0)
    (a,) = pipe.run([_req("a")])
    assert a.plan.steps[0].subject == "the red circle" and a.plan_reward == 0.6
    assert a.plans_tried == 2  # only two distinct plans exist


def test_plan_choice_needs_a_judge_and_candidates():
    with pytest.raises(EarlError, match="plan judge"):
        AgentPipeline(VotingDecomposer(SampledReplies({}, {})), PaintEditor(), plans=2)
