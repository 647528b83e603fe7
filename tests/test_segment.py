"""Segment Policy Optimization's pieces on hand-derived numbers (segment.py)."""
import math

import pytest
import torch

from segment import chain_advantages, cutpoint_bounds, cutpoints, fixed_bounds, segment_batch, token_advantages
from spo import policy_loss

#            t:  0     1    2     3    4    5     6
PROBS = [0.95, 0.5, 0.99, 0.3, 0.2, 0.97, 0.1]
LOGP = torch.log(torch.tensor(PROBS))


@pytest.mark.parametrize("threshold,interval,bounds", [
    (0.6, 1, [0, 3, 4, 6, 7]),       # cutpoints 1, 3, 4, 6: a boundary at every one after the first
    (0.6, 2, [0, 4, 7]),             # every second: segments hold cutpoints {1, 3} and {4, 6}
    (0.6, 3, [0, 6, 7]),             # {1, 3, 4} and {6}: the cutpoint on the last token opens a 1-token segment
    (0.6, 5, [0, 7]),                # fewer than interval + 1 cutpoints: one segment
    (0.05, 1, [0, 7]),               # no cutpoint at all
    (1.0, 2, [0, 2, 4, 6, 7]),       # every token is a cutpoint
])
def test_cutpoint_partition(threshold, interval, bounds):
    assert cutpoint_bounds(LOGP, threshold, interval) == bounds


def test_cutpoints_and_fixed_partition():
    assert cutpoints(LOGP, 0.6) == [1, 3, 4, 6]
    assert cutpoints(LOGP, 0.25) == [4, 6]
    assert fixed_bounds(7, 3) == [0, 3, 6, 7]
    assert fixed_bounds(6, 3) == [0, 3, 6]
    assert fixed_bounds(2, 5) == [0, 2]
    with pytest.raises(ValueError):
        cutpoint_bounds(LOGP, 0.5, 0)


def test_chain_advantages_telescope_to_the_trajectory_advantage():
    values = [0.25, 0.5, 1.0, 1.0]              # V(prompt), V at two boundaries, r
    assert chain_advantages(values) == [0.25, 0.5, 0.0]
    assert sum(chain_advantages(values)) == 1.0 - 0.25
    assert chain_advantages([0.75, 0.0]) == [-0.75]            # one segment: r - V(prompt), GRPO-like


def test_probability_mask_puts_the_advantage_on_low_probability_tokens():
    adv, carry = token_advantages([0, 4, 7], [0.5, -0.25], LOGP, 0.6, width=8)
    assert carry.tolist() == [0, 1, 0, 1, 1, 0, 1, 0]
    assert adv.tolist() == [0, 0.5, 0, 0.5, -0.25, 0, -0.25, 0]
    adv, carry = token_advantages([0, 4, 7], [0.5, -0.25], LOGP, None, width=8)   # every token
    assert carry.tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert adv.tolist() == [0.5] * 4 + [-0.25] * 3 + [0]


def test_segment_advantages_enter_the_loss():
    """[B, T] advantages into spo.policy_loss: at ratio 1 the gradient on token t is -A_t / (tokens carried)."""
    bounds = [[0, 4, 7], [0, 2]]
    values = [[0.5, 1.0, 0.0], [0.25, 1.0]]     # response 0: A = (+0.5, -1.0); response 1: A = +0.75
    logps = [LOGP, LOGP[:2]]
    adv, carry = segment_batch(bounds, values, logps, 0.6, width=7)
    assert adv.tolist() == [[0, 0.5, 0, 0.5, -1.0, 0, -1.0], [0, 0.75, 0, 0, 0, 0, 0]]
    logp = torch.zeros(2, 7, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(2, 7), adv, carry)
    loss.backward()
    n = carry.sum().item()                                          # 5 tokens carry an advantage
    assert n == 5
    assert torch.allclose(logp.grad, -adv / n)
    assert math.isclose(loss.item(), -(adv.sum() / n).item(), abs_tol=1e-7)


def test_a_segment_training_step(tmp_path):
    """--algo segment end to end: V by Monte Carlo at every boundary, only carried tokens trained, tokens counted."""
    import json
    import os

    import train as T
    run = str(tmp_path / "seg")
    T.train(T.Config(algo="segment", mc_rollouts=2, segment_interval=3, n_train=4, n_eval=2, batch_size=4, steps=2,
                     max_completion_length=12, eval_k=1, token_budget=1, output_dir=run))
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 1                                       # --token-budget 1: stops after the first step
    m = steps[0]
    assert m["segment/mc_samples"] == 2 * 4 * m["segment/segments"]      # N continuations per segment start
    assert 0 < m["segment/carry_share"] <= 1
    assert m["tokens/generated"] > 4 * m["response_length"]      # continuations count
    assert rows[-1]["step"] == 1 and "eval/greedy" in rows[-1]
