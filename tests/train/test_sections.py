"""The run and optim sections: what they refuse, the two schedules, and cadences of 0."""

import pytest
import torch

from earl.train.loop import _due
from earl.train.optim import make_scheduler
from earl.train.sections import OptimSection, RunSection


def _lrs(opt: OptimSection, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=opt.lr)
    sched = make_scheduler(optimizer, opt, steps)
    out = []
    for _ in range(steps + 1):
        out.append(sched.get_last_lr()[0])
        optimizer.step()  # no gradient: nothing moves, but the schedule is stepped in the order torch expects
        sched.step()
    return out


def test_linear_and_cosine_schedules_after_the_warm_up():
    # warm-up of 2 steps to 1.0, then 8 steps down: linear halves at step 6 (1 - 4/8), cosine too (its midpoint)
    lin = _lrs(OptimSection(lr=1.0, min_lr=0.0, warmup_steps=2, schedule="linear"), 10)
    cos = _lrs(OptimSection(lr=1.0, min_lr=0.2, warmup_steps=2, schedule="cosine"), 10)
    assert lin[:3] == pytest.approx([0.0, 0.5, 1.0]) and cos[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lin[6] == pytest.approx(0.5) and lin[4] == pytest.approx(0.75) and lin[10] == pytest.approx(0.0)
    assert cos[6] == pytest.approx(0.6) and cos[10] == pytest.approx(0.2)  # 0.2 + 0.8 * 0.5, then the floor


@pytest.mark.parametrize("kwargs,match", [
    (dict(schedule="step"), "schedule must be one of cosine, linear"),
    (dict(schedule="linear", min_lr=1e-5), "linear' decays to 0"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(lr=1e-5, min_lr=1e-4), "min_lr <= lr"),
])
def test_optim_refuses_what_no_schedule_can_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimSection(**kwargs)


def test_run_refuses_cadences_that_cannot_be_kept():
    for bad in (dict(log_every=0), dict(eval_every=-1), dict(save_every=-5), dict(keep_checkpoints=0)):
        with pytest.raises(ValueError, match="log_every >= 1"):
            RunSection(**bad)


def test_a_cadence_of_zero_falls_on_the_last_step_only():
    assert [s for s in range(1, 11) if _due(s, 0, 10)] == [10]
    assert [s for s in range(1, 11) if _due(s, 4, 10)] == [4, 8, 10]
