"""Advantages (Eq. 8-9), PPO/GSPO/SAPO losses (Eq. 10), drift and log-probs on tiny hand-made tensors."""
import math

import pytest
import torch

from spo import (degenerate_share, grpo_advantages, live_group_var, policy_drift, policy_loss, spo_advantages,
                 tis_weights, token_logprobs)

# --------------------------------------------------------------- advantages


def test_spo_advantages_by_hand():
    # A = r - v = (0.5, -0.5, 0.75, -0.75); mean 0; unbiased var = (2*.25 + 2*.5625)/3 = 13/24
    a = spo_advantages([1, 0, 1, 0], [0.5, 0.5, 0.25, 0.75])
    s = math.sqrt(13 / 24)
    torch.testing.assert_close(a, torch.tensor([0.5 / s, -0.5 / s, 0.75 / s, -0.75 / s]))
    assert a.dtype == torch.float32


def test_spo_advantages_without_signal_are_zero_not_nan():
    for r, b in [([1.0], [0.3]), ([1, 1, 1], [0.2, 0.2, 0.2]), ([0, 1], [0.0, 1.0])]:
        a = spo_advantages(r, b)
        assert torch.equal(a, torch.zeros(len(r)))
    # same rewards but different baselines still carry signal (unlike a GRPO group)
    assert spo_advantages([1, 1], [0.2, 0.8]).tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        spo_advantages([1, 0], [0.5])


def test_zero_if_rewards_agree_silences_only_single_outcome_batches():
    # every r = 1: A = 1 - v = (0.8, 0.5, 0.2); mean 0.5, unbiased std 0.3, so Eq. 9 gives (1, 0, -1): the
    # correct answer on the prompt rated 0.8 is pushed down by the tracker alone. The option gives zeros.
    b = [0.2, 0.5, 0.8]
    assert spo_advantages([1, 1, 1], b).tolist() == pytest.approx([1, 0, -1], abs=1e-6)
    assert torch.equal(spo_advantages([1, 1, 1], b, zero_if_rewards_agree=True), torch.zeros(3))
    assert torch.equal(spo_advantages([0, 0, 0], b, zero_if_rewards_agree=True), torch.zeros(3))
    mixed = ([1, 0, 1], [0.5, 0.5, 0.5])   # A = (.5, -.5, .5): mean 1/6, unbiased var 1/3 -> (1, -2, 1) / sqrt 3
    want = [1 / math.sqrt(3), -2 / math.sqrt(3), 1 / math.sqrt(3)]
    assert spo_advantages(*mixed, zero_if_rewards_agree=True).tolist() == pytest.approx(want, abs=1e-6)


def test_grpo_advantages_and_degenerate_groups():
    r = [1, 0, 0, 0, 1, 1, 1, 1]
    # group 1: mean .25, unbiased std sqrt((.5625 + 3*.0625)/3) = .5; group 2 all equal -> 0
    a = grpo_advantages(r, 4)
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]) / (0.5 + 1e-6))
    torch.testing.assert_close(grpo_advantages(r, 4, scale=False), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    assert degenerate_share(r, 4) == 0.5
    assert degenerate_share([0, 1, 0, 0], 2) == 0.5
    # the live group alone: r - mean = .75, -.25, -.25, -.25 (mean 0), variance (.5625 + 3 * .0625) / 4 = .1875
    assert live_group_var(r, 4) == pytest.approx(0.1875)
    assert live_group_var([1, 0, 0, 1], 2) == pytest.approx(0.25) and live_group_var([1, 1, 0, 0], 2) == 0.0
    with pytest.raises(ValueError, match="group_size=3"):
        grpo_advantages(r, 3)

# --------------------------------------------------------------- PPO loss


def _one_token_batch(ratios, advs):
    """Responses of one token each with the given ratios pi/pi_old; logp is the leaf."""
    old = torch.full((len(ratios), 1), -1.0)
    logp = (old + torch.log(torch.tensor(ratios)).unsqueeze(-1)).requires_grad_()
    return logp, old, torch.tensor(advs), torch.ones(len(ratios), 1)


def test_ppo_loss_at_and_across_both_clip_edges():
    # (ratio, A) -> per-token loss, d loss_token / d logp   (d ratio / d logp = ratio)
    cases = [
        (1.10, +1.0, -1.10, -1.10),   # inside [0.8, 1.28]: -A r
        (1.50, +1.0, -1.28, 0.0),     # above 1 + eps_high with A > 0: clipped, no gradient
        (0.50, +1.0, -0.50, -0.50),   # below 1 - eps with A > 0: not clipped (pessimistic side)
        (0.90, -1.0, 0.90, 0.90),     # inside: -A r
        (0.50, -1.0, 0.80, 0.0),      # below 1 - eps with A < 0: clipped
        (5.00, -1.0, 5.00, 5.00),     # far above with A < 0: unclipped until the dual clip
        (20.0, -1.0, 10.0, 0.0),      # dual clip caps the loss at -A * 10
        (1.25, +2.0, -2.50, -2.50),   # just under the high edge 1.28 with A = 2
        (1.30, +2.0, -2.56, 0.0),     # just over it
    ]
    logp, old, adv, mask = _one_token_batch([c[0] for c in cases], [c[1] for c in cases])
    loss, stats = policy_loss(logp, old, adv, mask)
    loss.backward()
    n = len(cases)
    assert loss.item() == pytest.approx(sum(c[2] for c in cases) / n, abs=1e-5)
    torch.testing.assert_close(logp.grad.squeeze(-1), torch.tensor([c[3] for c in cases]) / n)
    assert stats["clip_frac_high"] == pytest.approx(2 / n)     # rows 2 and 9
    assert stats["clip_frac_low"] == pytest.approx(1 / n)      # row 5
    assert stats["clip_frac_dual"] == pytest.approx(1 / n)     # row 7
    assert stats["ratio_max"] == pytest.approx(20.0)
    # without dual clip the A<0, ratio 20 row costs 20 and passes gradient 20
    loss2, _ = policy_loss(logp, old, adv, mask, dual_clip=None)
    assert loss2.item() == pytest.approx(loss.item() + 10 / n, abs=1e-5)


def test_padding_contributes_nothing_and_token_mean():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 0.0, 0.0]])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 7.0, -9.0]], requires_grad=True)  # padded ratios wild
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = policy_loss(logp, old, torch.tensor([1.0, -2.0]), mask)
    loss.backward()
    # ratio 1 everywhere that counts: token losses -1, -1, -1, +2 -> token-mean over 4 tokens = -0.25
    assert loss.item() == pytest.approx(-0.25)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]]))
    assert stats["ratio_max"] == pytest.approx(1.0) and stats["approx_kl"] == pytest.approx(0.0)
    # micro-batching: two halves with normalizer=4 sum to the whole batch's loss
    halves = [policy_loss(logp[i:i + 1], old[i:i + 1], torch.tensor([1.0, -2.0])[i:i + 1], mask[i:i + 1],
                          normalizer=4)[0] for i in (0, 1)]
    assert (halves[0] + halves[1]).item() == pytest.approx(loss.item())


def test_log_ratio_is_clamped():
    logp = torch.tensor([[60.0]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), dual_clip=None)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(math.exp(20), rel=1e-5)


# --------------------------------------------------------------- GSPO and SAPO


def test_gspo_equals_ppo_for_one_token_responses():
    logp, old, adv, mask = _one_token_batch([1.1, 1.5, 0.5, 0.9, 0.5], [1.0, 1.0, 1.0, -1.0, -1.0])
    l_ppo, _ = policy_loss(logp, old, adv, mask, dual_clip=None)
    g_ppo, = torch.autograd.grad(l_ppo, logp)
    l_gspo, _ = policy_loss(logp, old, adv, mask, variant="gspo")
    g_gspo, = torch.autograd.grad(l_gspo, logp)
    assert l_gspo.item() == pytest.approx(l_ppo.item())
    torch.testing.assert_close(g_gspo, g_ppo)


def test_gspo_sequence_ratio_by_hand():
    # log ratios 0.1 and 0.3 -> s = exp(0.2) = 1.2214 < 1.28: loss -s, gradient -s/2 on each token
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, 0.3, 5.0]], requires_grad=True)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]), variant="gspo")
    loss.backward()
    s = math.exp(0.2)
    assert loss.item() == pytest.approx(-s)
    torch.testing.assert_close(logp.grad, torch.tensor([[-s / 2, -s / 2, 0.0]]))
    # log ratios 0.3 and 0.3 -> s = exp(0.3) = 1.35 > 1.28: clipped, no gradient
    logp2 = torch.tensor([[0.3, 0.3, 0.0]], requires_grad=True)
    loss2, stats = policy_loss(logp2, old, torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]), variant="gspo")
    loss2.backward()
    assert loss2.item() == pytest.approx(-1.28) and logp2.grad.abs().sum() == 0
    assert stats["clip_frac_high"] == 1.0


def test_sapo_gradient_is_the_unclipped_policy_gradient_at_ratio_one():
    logp, old, adv, mask = _one_token_batch([1.0, 1.0, 1.0], [1.0, -0.5, 2.0])
    for tau_pos, tau_neg in [(1.0, 1.05), (0.3, 3.0)]:
        l, _ = policy_loss(logp, old, adv, mask, variant="sapo", tau_pos=tau_pos, tau_neg=tau_neg)
        g, = torch.autograd.grad(l, logp)
        torch.testing.assert_close(g.squeeze(-1), -adv / 3)      # d(-A r)/dlogp at r = 1, token-mean


def test_sapo_gate_fades_smoothly():
    # ratio 2, tau 1, A = 1: dL/dlogp = -(4/tau) tau sigma'(1) r = -4 * 0.19661193 * 2 = -1.5728955
    logp, old, adv, mask = _one_token_batch([2.0], [1.0])
    l, _ = policy_loss(logp, old, adv, mask, variant="sapo", tau_pos=1.0)
    g, = torch.autograd.grad(l, logp)
    assert g.item() == pytest.approx(-1.5728955, abs=1e-6)
    # ratio 5: the gate's weight 4 sigma'(4) = 0.0707 of its value at 1 (PPO's is exactly 0 past 1.28)
    # dL/dlogp = -4 * sigma(4)(1 - sigma(4)) * 5 = -20 * 0.0176627 = -0.353254
    logp, old, adv, mask = _one_token_batch([5.0], [1.0])
    g, = torch.autograd.grad(policy_loss(logp, old, adv, mask, variant="sapo")[0], logp)
    assert g.item() == pytest.approx(-0.353254, abs=1e-6)


def test_unknown_variant():
    logp, old, adv, mask = _one_token_batch([1.0], [1.0])
    with pytest.raises(ValueError, match="variant"):
        policy_loss(logp, old, adv, mask, variant="grpo")

# --------------------------------------------------------------- drift and log-probs


def test_policy_drift_by_hand():
    prev = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    now = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -0.7, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(policy_drift(prev, now, mask), torch.tensor([0.25, 0.2]))  # (.5+0)/2, (0+.2+.4)/3
    assert policy_drift(prev, now, torch.zeros(2, 3)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype,temperature", [(torch.float32, 1.0), (torch.float32, 0.7), (torch.bfloat16, 1.0)])
def test_token_logprobs_matches_log_softmax(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 7, 11, generator=g) * 3).to(dtype).requires_grad_()
    tokens = torch.randint(0, 11, (5, 7), generator=g)
    got = token_logprobs(logits, tokens, temperature=temperature, chunk_size=2)
    ref = torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, ref)
    assert got.dtype == torch.float32
    g1, = torch.autograd.grad(got.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2)


def test_tis_weights_hand_derived():
    # pi_old / pi_behaviour = 0.5/0.25, 0.2/0.4, 0.9/0.3 = 2, 0.5, 3 -> capped at 2: 2, 0.5, 2; padding 0
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.7]]))
    beh = torch.log(torch.tensor([[0.25, 0.4, 0.3, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, st = tis_weights(old, beh, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 2.0, 0.0]]))
    assert st["tis/ratio_mean"] == pytest.approx(5.5 / 3) and st["tis/ratio_max"] == pytest.approx(3.0)
    assert st["tis/truncated_share"] == pytest.approx(1 / 3)           # 2 is at the cap, not above it
    # on-policy (ratio 1), A = 1: each token's loss is -1, weighted: -(2 + 0.5 + 2) / 3 tokens
    logp = old.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, weights=w)
    assert loss.item() == pytest.approx(-1.5)
    loss.backward()                                  # d/dlogp of -w * ratio at ratio 1 = -w / 3 tokens
    assert torch.allclose(logp.grad, torch.tensor([[-2 / 3, -0.5 / 3, -2 / 3, 0.0]]))
    unweighted, _ = policy_loss(old, old, torch.tensor([1.0]), mask)
    assert unweighted.item() == pytest.approx(-1.0)
