"""Self-consistency by outcome: sampled plans carried out on the scene parsed from the source, voted by
the scene each predicts.

`VotingDecomposer` counts plans by their text (their steps as a multiset). Two plans that say the
same edit in other words ("move the red circle to row 2" and "move the small red circle to row 2")
then split their votes, and a plan that cannot apply to the picture at all (its subject is not
there, its target cell is taken) still votes. Here each sampled plan is applied symbolically to the
scene that the ShapesEdit image parser reads from the source image (`earl.agents.plan_writer.
predicted_target`, the plan writer's tool), and plans vote by the scene they predict: wordings of one
edit pool their votes, and a plan that does not apply, or changes nothing, casts none. The parser
reads pixels only; no scene graph, program or target is read, so this is an oracle-free decomposer.

Samples are seeded by (seed, instruction), so the agent and a plan writer that share this decomposer
reach the same plan for a request. Plans are ranked by the votes of their outcome (ties: the greedy plan's outcome first, then the
earliest sample), one plan per outcome (the first written); when no plan applies, the greedy plan
alone is returned, so its failure is the one reported.
"""

from __future__ import annotations

from earl.agents.decomposer import DecomposeRequest, Decomposition, VotingDecomposer
from earl.agents.plan import PlanError
from earl.agents.plan_writer import outcome_key, predicted_target
from earl.seeds import sample_seed
from earl.shapes.oracle import parse_scene
from earl.shapes.scene import Scene


def rank_by_outcome(greedy: Decomposition, samples: list[Decomposition], scene: Scene) -> list[Decomposition]:
    """The plans of `greedy` and `samples`, one per predicted outcome, most-predicted first."""
    groups: dict[tuple, list[Decomposition]] = {}
    start = outcome_key(scene)
    for d in [greedy, *samples]:
        if d.plan is None:
            continue
        try:
            key = outcome_key(predicted_target(d.plan, scene))
        except PlanError:
            continue  # does not apply to the picture: no vote
        if key != start:
            groups.setdefault(key, []).append(d)
    if not groups:
        return [greedy]
    return [g[0] for g in sorted(groups.values(), key=len, reverse=True)]


class OutcomeVotingDecomposer(VotingDecomposer):
    """`VotingDecomposer` with plans counted by the scene they predict on the parsed source."""

    def __init__(self, base, votes: int = 8, temperature: float = 1.0, seed: int = 0):
        super().__init__(base, votes, temperature, seed)
        self.name = f"{getattr(base, 'name', 'decomposer')}+outcome{votes}"

    def sample_seeds(self, requests: list[DecomposeRequest]) -> list[int]:
        # seeded by the instruction, not the request id: a principle writer sharing this decomposer
        # (`earl.agents.plan_writer`) asks without an id and must get the same samples, hence the same plan
        return [sample_seed(self.seed, r.instruction) for r in requests]

    def rank(self, greedy: Decomposition, samples: list[Decomposition], request: DecomposeRequest) -> list[Decomposition]:
        return rank_by_outcome(greedy, samples, parse_scene(request.image).scene)
