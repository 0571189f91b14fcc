"""ShapesEdit programs as plans: every ground-truth step parses back to its operation on its scene."""

import pytest

from earl.agents.plan import PlanError, Step, parse_plan, step_instruction
from earl.agents.shapes import op_to_step, program_plan, resolve, step_to_op
from earl.shapes.dataset import generate_samples
from earl.shapes.program import Move, Remove, op_from_dict
from earl.shapes.scene import Scene, ShapeObject


@pytest.mark.parametrize("split", ["simple", "complex"])
def test_ground_truth_plans_round_trip(split):
    for sample in generate_samples(split, 150, seed=3):
        plan = program_plan(sample.source_scene, sample.program)
        assert len(plan) == len(sample.program)
        assert parse_plan(plan.text(" ; ")) == plan
        scene = sample.source_scene
        for step, op in zip(plan.steps, sample.program.ops):
            assert step_to_op(step, scene) == op, (sample.instruction, step)
            scene = op.apply(scene)
        assert scene == sample.target_scene


SCENE = Scene("white", (ShapeObject("circle", "red", "small", 0, 0), ShapeObject("circle", "blue", "large", 1, 1),
                        ShapeObject("square", "red", "small", 3, 3)))


def test_subjects_resolve_to_exactly_one_object():
    assert resolve("the blue circle", SCENE).cell == (1, 1)
    assert resolve("the square", SCENE).cell == (3, 3)
    assert resolve("the shape in the bottom-right corner", SCENE).cell == (3, 3)
    assert resolve("the shape in row 2, column 2", SCENE).cell == (1, 1)
    for bad in ("the circle", "the green circle", "the shape in row 3, column 3", "the shape in row 9, column 1",
                "a red circle", "the wobbly circle"):
        with pytest.raises(PlanError) as e:
            resolve(bad, SCENE)
        assert e.value.kind == "unapplicable"


def test_steps_become_operations_or_unapplicable():
    assert step_to_op(Step("remove", "the square", "nothing"), SCENE) == Remove((3, 3))
    assert step_to_op(Step("move", "the blue circle", "the top-right corner"), SCENE) == Move((1, 1), (0, 3))
    for bad in (Step("move", "the blue circle", "row 1, column 1"),  # occupied
                Step("add", "a small red square", "row 1, column 1"),  # occupied
                Step("add", "a red square", "row 3, column 1"),  # size missing
                Step("recolour", "the square", "mauve")):
        with pytest.raises(PlanError):
            step_to_op(bad, SCENE)


def test_a_move_asked_as_a_step_keeps_its_step_form():

    step = op_to_step(Move((1, 1), (0, 1), relative=True), SCENE)
    assert step == Step("move", "the blue circle", "one cell up")
    assert step_instruction(step) == "Move the blue circle one cell up."
    assert step_to_op(step, SCENE) == Move((1, 1), (0, 1), relative=True)
    assert op_to_step(Move((1, 1), (0, 1)), SCENE).goal == "row 1, column 2"  # asked as a place
    for goal in ("one cell to the left", "one cell up"):  # off the grid from row 1, column 1
        with pytest.raises(PlanError, match="leaves the grid"):
            step_to_op(Step("move", "the small circle", goal), SCENE)


def test_relative_moves_are_generated_and_older_programs_still_load():
    moves = [op for s in generate_samples("simple", 300, seed=5) for op in s.program.ops if isinstance(op, Move)]
    assert any(m.relative for m in moves) and not all(m.relative for m in moves)
    assert op_from_dict({"op": "move", "cell": [0, 0], "to_cell": [1, 0]}) == Move((0, 0), (1, 0), relative=False)
