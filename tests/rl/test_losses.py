"""GRPO math against numbers worked out by hand in the comments."""

import math

import pytest
import torch

from earl.rl.losses import BatchCounts, group_advantages, k3_kl, policy_loss, zero_variance_groups


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    # group 0: mean 0.5, centred ±0.5, population std 0.5 -> ±0.5 / (0.5 + 1e-4)
    a = group_advantages(r)
    expect = 0.5 / (0.5 + 1e-4)
    torch.testing.assert_close(a[0], torch.tensor([expect, -expect, -expect, expect]))
    assert torch.equal(a[1], torch.zeros(4))  # uniform group: no signal
    # no std scaling (Dr. GRPO): just centred
    torch.testing.assert_close(group_advantages(r, scale_std=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_failed_rewards_are_excluded_not_zeroed():
    r = torch.tensor([[1.0, 0.0, 123.0, 1.0]])
    valid = torch.tensor([[True, True, False, True]])
    # valid rewards 1, 0, 1: mean 2/3, centred 1/3, -2/3, 1/3; var = (1/9 + 4/9 + 1/9) / 3 = 2/9
    std = math.sqrt(2 / 9)
    a = group_advantages(r, valid)
    torch.testing.assert_close(a[0], torch.tensor([1 / 3, -2 / 3, 0.0, 1 / 3]) / (std + 1e-4))
    # a group with a single valid sample has no baseline: advantage 0
    assert torch.equal(group_advantages(r, torch.tensor([[True, False, False, False]])), torch.zeros(1, 4))
    assert zero_variance_groups(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.ones(2, 2, dtype=torch.bool)).tolist() == [True, False]


@pytest.mark.parametrize("agg,expected", [("grpo", -0.5), ("bnpo", -1.0), ("dr_grpo", -0.75), ("dapo", -1.0)])
def test_loss_aggregations_by_hand(agg, expected):
    # ratio 1 everywhere, so each token's loss is -A. A = [2, -1]; row 0 has 2 tokens, row 1 has 1.
    # grpo: per-sequence means -2 and 1 -> mean -0.5; dr_grpo: (-2 - 2 + 1) / (2 rows * 2) = -0.75;
    # bnpo and dapo (one micro-batch is the whole batch): (-2 - 2 + 1) / 3 tokens = -1
    lp = torch.zeros(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = policy_loss(lp, lp, torch.tensor([2.0, -1.0]), mask, aggregation=agg)
    assert loss.item() == pytest.approx(expected)
    assert stats["clip_fraction"] == 0 and stats["ratio_mean"] == pytest.approx(1.0)


# Two micro-batches of one batch, ratio 1 (each token's loss is -A), T = 2:
#   micro-batch 1: A = [2, -4], masks [1, 1] and [1, 0] -> tokens -2, -2 | +4  (sum 0, 3 tokens)
#   micro-batch 2: A = [1, 3],  masks [1, 1] and [0, 0] -> tokens -1, -1 | -   (sum -2, 2 tokens)
# the batch: 5 tokens, 3 sequences with tokens, 4 rows, 2 micro-batches
#   grpo:    sequence means -2, 4, -1 over 3 sequences -> 1/3 (shares 2/3 and -1/3)
#   bnpo:    micro-batch token means 0 and -1, averaged -> -0.5 (shares 0 and -0.5)
#   dr_grpo: sum -2 / (4 rows x 2) -> -0.25 (shares 0 and -0.25)
#   dapo:    sum -2 / 5 tokens -> -0.4 (shares 0 and -0.4); per micro-batch it would be bnpo's -0.5
MICRO = [(torch.tensor([2.0, -4.0]), torch.tensor([[True, True], [True, False]])),
         (torch.tensor([1.0, 3.0]), torch.tensor([[True, True], [False, False]]))]


@pytest.mark.parametrize("agg,shares", [("grpo", (2 / 3, -1 / 3)), ("bnpo", (0.0, -0.5)), ("dr_grpo", (0.0, -0.25)),
                                        ("dapo", (0.0, -0.4))])
def test_loss_aggregations_over_micro_batches_by_hand(agg, shares):
    batch = BatchCounts.of(torch.cat([m for _, m in MICRO]), micro_batches=2)
    assert batch == BatchCounts(tokens=5, sequences=3, rows=4, micro_batches=2)
    lp = torch.zeros(2, 2)
    got = [policy_loss(lp, lp, adv, mask, aggregation=agg, batch=batch)[0].item() for adv, mask in MICRO]
    assert got == pytest.approx(list(shares))
    # the shares add up to the loss of the two micro-batches taken as one (where the names agree with it)
    if agg != "bnpo":
        whole = policy_loss(torch.zeros(4, 2), torch.zeros(4, 2), torch.cat([a for a, _ in MICRO]),
                            torch.cat([m for _, m in MICRO]), aggregation=agg)[0].item()
        assert sum(got) == pytest.approx(whole)


def test_clipping_by_hand():
    old = torch.zeros(3, 1)
    # row 0: ratio e^0.5 = 1.6487, A = +1 -> max(-1.6487, -1.2) = -1.2 (clipped)
    # row 1: ratio e^0.5, A = -1 -> max(1.6487, 1.2) = 1.6487 (not clipped)
    # row 2: ratio 0.5, A = -1 -> max(0.5, 0.8) = 0.8 (clipped)
    lp = torch.tensor([[0.5], [0.5], [math.log(0.5)]])
    loss, stats = policy_loss(lp, old, torch.tensor([1.0, -1.0, -1.0]), torch.ones(3, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx((-1.2 + math.exp(0.5) + 0.8) / 3, rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)


def test_k3_kl_by_hand_and_in_the_loss():
    # logp 0, ref ln 0.5: d = -0.6931 -> e^d - d - 1 = 0.5 + 0.6931 - 1 = 0.1931
    lp, ref = torch.zeros(1, 1), torch.full((1, 1), math.log(0.5))
    assert k3_kl(lp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(lp, lp).item() == 0
    loss, stats = policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))
    assert stats["kl"] == pytest.approx(0.5 + math.log(2) - 1)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), beta=0.1)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), aggregation="ppo")


def test_gradient_sign_pushes_up_good_samples():
    lp = torch.zeros(2, 1, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=torch.bool))
    loss.backward()
    assert lp.grad[0, 0] < 0 < lp.grad[1, 0]  # descending raises the good sample's log-prob
