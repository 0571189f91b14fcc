"""A principle writer that uses tools: the agent's plan, carried out on the scene read from the image.

The learned writer (`earl.rrm.writer.UnifiedPrincipleWriter`) has to put every cell and colour of
the answer into words from the image tokens. This one splits the same job among parts that already
exist and reads nothing but the source image and the instruction, as GenArtist has tools do what a
model does badly:

    (source image, instruction)
        -> decomposer: a plan of (action, subject, goal) steps        (a model: `earl.agents.unified`)
        -> ShapesEdit image parser: the source scene                   (perception: `earl.shapes.oracle.parse_scene`)
        -> each step applied symbolically: the predicted target scene (`earl.agents.shapes.step_to_op`)
        -> shapes_points(source scene, predicted target): the ten points

The parser reads pixels only, never a scene graph, the program or the target. Any error is a named
`PrincipleFailure`, counted by whoever asked and never guessed: `plan` when the decomposer wrote
no readable plan, `unapplicable` when a step does not apply to the parsed scene (its subject is not
one object there, its target cell is taken) or the plan changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from earl.agents.decomposer import DecomposeRequest
from earl.agents.plan import Plan, PlanError
from earl.agents.shapes import step_to_op
from earl.agents.unified import UnifiedDecomposer
from earl.rrm.principles import EvalPoint, shapes_points
from earl.rrm.writer import PrincipleFailure
from earl.seeds import derive_seed
from earl.shapes.oracle import parse_scene
from earl.shapes.scene import Scene

PLAN_WRITER = "plan"  # the spelled writer value: `plan` (the bundled decomposer) or `plan:DIR`


def outcome_key(scene: Scene) -> tuple:
    """What two scenes must share to be one outcome of an edit: the background and the set of objects."""
    return scene.background, frozenset(scene.objects)


def predicted_target(plan: Plan, scene: Scene) -> Scene:
    """`scene` with every step of `plan` applied in order; PlanError('unapplicable') at the first
    step that does not apply."""
    for step in plan.steps:
        scene = step_to_op(step, scene).apply(scene)
    return scene


class PlanPrincipleWriter:
    """Principles from a decomposer's plan applied to the parsed source scene (a tool-using writer).

    `decomposer`: anything with `.decompose(list[DecomposeRequest]) -> list[Decomposition]`; it is
    given the image and the instruction only (an empty `meta`). `seed`: with a hash of the
    instruction, which of the equally good preservation points `shapes_points` draws."""

    name = "plan"
    reads_answer = False  # the firewall's mark (`earl.agents.firewall`)

    def __init__(self, decomposer, seed: int = 0):
        self.decomposer, self.seed = decomposer, seed

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", **kw) -> PlanPrincipleWriter:
        return cls(UnifiedDecomposer.from_pretrained(Path(path), device=device), **kw)

    def write(self, sources: list[Image.Image], instructions: list[str]) -> list[list[EvalPoint] | PrincipleFailure]:
        decompositions = self.decomposer.decompose([DecomposeRequest(im, ins) for im, ins in zip(sources, instructions)])
        return [self._points(im, ins, d) for im, ins, d in zip(sources, instructions, decompositions)]

    def point_seed(self, instruction: str) -> int:
        """The seed of one request's points: fixed by the instruction, so a rerun writes the same points."""
        return derive_seed(self.seed, instruction, sep="|", bits=32)

    def _points(self, source: Image.Image, instruction: str, decomposition) -> list[EvalPoint] | PrincipleFailure:
        plan = decomposition.plan
        if plan is None:
            return PrincipleFailure("plan", decomposition.error or str(decomposition.failure), decomposition.raw)
        scene = parse_scene(source).scene
        try:
            target = predicted_target(plan, scene)
        except PlanError as e:
            return PrincipleFailure("unapplicable", str(e), plan.text())
        if outcome_key(target) == outcome_key(scene):
            return PrincipleFailure("unapplicable", "the plan changes nothing in the parsed scene", plan.text())
        try:
            return shapes_points(scene, target, seed=self.point_seed(instruction))
        except ValueError as e:  # an edit with too few checks to ask ten questions about
            return PrincipleFailure("unapplicable", str(e), plan.text())


def plan_writer_dir(spec: str) -> str | None:
    """The decomposer directory of a spelled plan writer ('' for `plan`: the bundled one), or None
    when `spec` names a learned writer's directory instead."""
    if spec == PLAN_WRITER:
        return ""
    if spec.startswith(PLAN_WRITER + ":"):
        return spec[len(PLAN_WRITER) + 1:]
    return None
