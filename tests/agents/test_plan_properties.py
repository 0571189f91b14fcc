"""Properties of the plan format over generated plans (hypothesis): what a plan writes, the parser reads back;
F1 is a proper score."""

from hypothesis import given, settings
from hypothesis import strategies as st

from earl.agents.plan import ACTIONS, MAX_STEPS, Plan, PlanError, Step, normalise, parse_plan, plan_f1

# field text as a decomposer writes it: words, digits, commas, hyphens; never the format's own '|', ';' or a newline
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789,- ", min_size=1, max_size=30).filter(
    lambda t: normalise(t) not in ("", "-"))
steps = st.builds(Step, st.sampled_from(ACTIONS), words, words)
plans = st.lists(steps, min_size=1, max_size=MAX_STEPS).map(lambda s: Plan(tuple(s)))


def _normalised(plan: Plan) -> Plan:
    return Plan(tuple(Step(s.action, normalise(s.subject), normalise(s.goal)) for s in plan.steps))


@settings(max_examples=200, deadline=None)
@given(plans, st.sampled_from(["\n", " ; ", ";"]))
def test_a_written_plan_reads_back_as_written(plan, separator):
    assert parse_plan(plan.text(separator)) == _normalised(plan)


@settings(max_examples=200, deadline=None)
@given(plans, plans)
def test_f1_is_a_symmetric_score_in_0_1_and_1_only_on_the_same_steps(a, b):
    f = plan_f1(a, b)
    assert 0.0 <= f <= 1.0 and f == plan_f1(b, a)
    assert plan_f1(a, a) == 1.0
    same = sorted(s.key() for s in a.steps) == sorted(s.key() for s in b.steps)
    assert (f == 1.0) == same
    assert plan_f1(None, b) == 0.0


@settings(max_examples=100, deadline=None)
@given(plans)
def test_a_plan_cut_by_the_token_budget_is_never_read(plan):
    try:
        parse_plan(plan.text(), finished=False)
    except PlanError as e:
        assert e.kind == "truncated"
    else:
        raise AssertionError("an unfinished plan was read")
