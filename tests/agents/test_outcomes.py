"""Self-consistency by outcome: plans voted by the scene they predict on the parsed source image."""

from earl.agents.decomposer import DecomposeRequest, rank_plans, read_plan
from earl.agents.outcomes import OutcomeVotingDecomposer, rank_by_outcome
from earl.agents.shapes import program_plan
from earl.shapes.dataset import generate_samples
from earl.shapes.oracle import parse_scene
from earl.shapes.render import render


def _sample():
    return next(iter(generate_samples("simple", 1, 3, part="test")))


def test_plans_that_do_not_apply_cast_no_vote_where_text_voting_lets_them_win():
    s = _sample()
    right = read_plan(program_plan(s.source_scene, s.program).text())
    wrong = read_plan("remove | the purple hexagon | nothing")  # no such object in the picture
    idle = read_plan(f"background | the background | {s.source_scene.background}")  # changes nothing
    scene = parse_scene(render(s.source_scene)).scene
    assert rank_plans(wrong, [wrong, right])[0].plan == wrong.plan  # by text, the twice-written plan wins
    assert [d.plan for d in rank_by_outcome(wrong, [wrong, idle, idle, right], scene)] == [right.plan]
    assert rank_by_outcome(wrong, [idle, read_plan("oops")], scene) == [wrong]  # none applies: the greedy one


class Scripted:
    """A sampling decomposer with fixed answers: the greedy plan, then the samples; records the seeds."""

    name = "scripted"

    def __init__(self, greedy, samples):
        self.greedy, self.samples, self.seeds = greedy, samples, []

    def decompose(self, requests):
        return [read_plan(self.greedy) for _ in requests]

    def sample(self, requests, n, temperature, seeds):
        self.seeds.append(seeds)
        return [[read_plan(t) for t in self.samples[:n]] for _ in requests]


def test_the_outcome_voter_chooses_the_plan_whose_outcome_recurs_and_is_seeded_by_the_instruction():
    s = _sample()
    right = program_plan(s.source_scene, s.program).text()
    base = Scripted("remove | the purple hexagon | nothing", [right, "remove | the purple hexagon | nothing", right])
    voter = OutcomeVotingDecomposer(base, votes=3)
    image = render(s.source_scene)
    [d] = voter.decompose([DecomposeRequest(image, s.instruction, meta={"id": "a"})])
    assert d.plan == read_plan(right).plan and voter.name == "scripted+outcome3"
    voter.decompose([DecomposeRequest(image, s.instruction)])  # no id (as a principle writer asks)
    assert base.seeds[0] == base.seeds[1]
