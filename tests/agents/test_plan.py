"""The plan format, its strict parser, and the F1 reward, with expected values worked by hand."""

import json

import pytest

from earl.agents.plan import (
    MAX_STEPS,
    Plan,
    PlanError,
    Step,
    normalise,
    parse_plan,
    plan_f1,
    step_instruction,
)
from earl.agents.rewards import f1_reward, format_reward

GOOD = "recolour | the red circle | blue\nremove | the shape in row 2, column 3 | nothing"


def test_good_plans_parse_in_every_accepted_layout():
    want = Plan((Step("recolour", "the red circle", "blue"), Step("remove", "the shape in row 2, column 3", "nothing")))
    assert parse_plan(GOOD) == want
    assert parse_plan("1. recolor | The Red Circle | Blue ; 2) remove | the shape in row 2 , column 3 | nothing") == want
    assert parse_plan(want.text(" ; ")) == want


@pytest.mark.parametrize("text, kind", [
    ("", "empty"),
    ("   \n ; ", "empty"),
    ("recolour the red circle blue", "truncated"),  # one field only, and it is the last line
    ("recolour | the red circle\nremove | the square | nothing", "malformed"),  # a middle step lacks a field
    ("remove | the square | nothing\nrecolour | the red circle", "truncated"),  # cut in the last step
    ("recolour | | blue", "malformed"),
    ("recolour | a | b | c", "malformed"),
    ("paint | the red circle | blue", "unknown_action"),
    ("\n".join(["remove | the square | nothing"] * (MAX_STEPS + 1)), "too_long"),
])
def test_bad_plans_are_named_failures(text, kind):
    with pytest.raises(PlanError) as e:
        parse_plan(text)
    assert e.value.kind == kind


def test_a_plan_cut_by_the_token_budget_is_truncated_even_if_it_looks_whole():
    with pytest.raises(PlanError) as e:
        parse_plan(GOOD, finished=False)
    assert e.value.kind == "truncated"


def test_normalise_only_touches_spelling():
    assert normalise("  Row 4 ,  column 1 . ") == "row 4, column 1"
    assert normalise("the bottom - right corner") == "the bottom-right corner"  # as a word-level tokenizer decodes it
    assert normalise("the red circle") != normalise("the red square")


def test_f1_by_hand():
    a, b, c = (Step("remove", "the red circle", "nothing"), Step("recolour", "the square", "blue"),
               Step("add", "a small red square", "row 1, column 1"))
    gold = Plan((a, b))
    assert plan_f1(Plan((a, b)), gold) == 1.0
    assert plan_f1(Plan((b, a)), gold) == 1.0  # order is the sequencer's business
    # 1 of 1 predicted right (P = 1), 1 of 2 gold found (R = 1/2): F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert plan_f1(Plan((a,)), gold) == pytest.approx(2 / 3)
    # 1 of 3 predicted right (P = 1/3), 1 of 2 found (R = 1/2): F1 = 2 * (1/6) / (5/6) = 0.4
    assert plan_f1(Plan((a, c, Step("remove", "the square", "nothing"))), gold) == pytest.approx(0.4)
    # a repeated step matches once (multiset): P = 1/2, R = 1/2, F1 = 1/2
    assert plan_f1(Plan((a, a)), gold) == pytest.approx(0.5)
    # one field wrong is no match (exact triples)
    assert plan_f1(Plan((Step("recolour", "the square", "green"),)), gold) == 0.0
    assert plan_f1(None, gold) == 0.0


def test_trl_reward_functions_score_strings_and_messages():
    gold = json.dumps(Plan((Step("remove", "the red circle", "nothing"),)).to_dict())
    completions = ["remove | the red circle | nothing", "remove the red circle",
                   [{"role": "assistant", "content": "remove | the Red circle | nothing"}]]
    assert format_reward(completions) == [1.0, 0.0, 1.0]
    assert f1_reward(completions, gold_plan=[gold] * 3) == [1.0, 0.0, 1.0]


def test_step_instructions_read_as_simple_edits():
    assert step_instruction(Step("recolour", "the red circle", "blue")) == "Make the red circle blue."
    assert step_instruction(Step("add", "a small red square", "the top-left corner")) == \
        "Add a small red square in the top-left corner."
    assert step_instruction(Step("background", "the white background", "black")) == "Change the background to black."
