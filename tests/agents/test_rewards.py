"""The closed-loop reward executes plans with the bundled editor and judges the final image."""

import json

from earl.agents.rewards import ClosedLoopReward, make_reward_functions
from earl.agents.shapes import program_plan
from earl.agents.unified import plan_text
from earl.shapes.dataset import generate_samples


def test_closed_loop_reward_pays_for_plans_that_work():
    samples = list(generate_samples("complex", 8, seed=5))
    gold = [plan_text(program_plan(s.source_scene, s.program)) for s in samples]
    cols = dict(source_scene=[json.dumps(s.source_scene.to_dict()) for s in samples],
                target_scene=[json.dumps(s.target_scene.to_dict()) for s in samples])
    reward = ClosedLoopReward()
    good = reward(gold, **cols)
    assert set(good) <= {0.0, 1.0} and sum(good) >= 5  # the ground-truth plans mostly succeed through the editor
    bad = reward(["remove the lot"] * 8, **cols)
    assert bad == [0.0] * 8  # unparseable plans earn nothing
    wrong = reward(["background | the white background | black"] * 8, **cols)
    assert sum(wrong) == 0  # a plan that does something else fails the oracle


def test_unknown_reward_names_are_refused():
    import pytest

    from earl.errors import ConfigError

    with pytest.raises(ConfigError, match="closed_loop"):
        make_reward_functions({"f2": 1.0})
    funcs, weights = make_reward_functions({"format": 0.1, "f1": 1.0})
    assert [f.__name__ for f in funcs] == ["format_reward", "f1_reward"] and weights == [0.1, 1.0]


def test_the_docstring_examples_hold():
    import doctest

    import earl.agents.plan
    import earl.agents.rewards

    for module in (earl.agents.plan, earl.agents.rewards):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
