"""Segment Policy Optimization's pieces on hand-derived numbers (extensions/segment.py), and both instances end to end."""
import math

import pytest
import torch

from extensions.segment import (chain_advantages, cutpoint_bounds, cutpoints, fixed_bounds, segment_batch, token_advantages,
                     tree_advantages, tree_segments, tree_values)
from spo import policy_loss

#            t:  0     1    2     3    4    5     6
EASY = dict(embedded_levels="1,1,1,2,4", sft_steps=0, learning_rate=2e-4, temperature=1.0)   # the mechanics only
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
                     max_completion_length=12, eval_k=1, token_budget=1, output_dir=run, **EASY))
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 1                                       # --token-budget 1: stops after the first step
    m = steps[0]
    assert m["segment/mc_samples"] == 2 * 4 * m["segment/segments"]      # N continuations per segment start
    assert 0 < m["segment/carry_share"] <= 1
    assert m["tokens/generated"] > 4 * m["response_length"]      # continuations count
    assert rows[-1]["step"] == 1 and "eval/greedy" in rows[-1]


# ---- SPO-tree. A 2-2 tree: the prompt (0) -> a (1), b (2); a -> a1 (3) r=1, a2 (4) r=0; b -> b1 (5) r=1, b2 (6) r=1
TREE = [-1, 0, 0, 1, 1, 2, 2]
TOKENS = [[], [10, 11], [20], [30, 31], [40], [50], [60]]


def test_tree_values_are_bottom_up_means():
    v = tree_values(TREE, [None, None, None, 1, 0, 1, 1])
    assert v == [0.75, 0.5, 1.0, 1.0, 0.0, 1.0, 1.0]        # V(a) = (1 + 0) / 2, V(prompt) = (0.5 + 1) / 2


def test_tree_advantages_are_value_minus_parent():
    v = tree_values(TREE, [None, None, None, 1, 0, 1, 1])
    assert tree_advantages(TREE, v) == [0.0, -0.25, 0.25, 0.5, -0.5, 0.0, 0.0]
    # std: a, b have values (0.5, 1): std 0.25 -> -1, +1; a1, a2 (1, 0): std 0.5 -> +1, -1; b1, b2 agree: 0
    assert tree_advantages(TREE, v, std=True) == [0.0, -1.0, 1.0, 1.0, -1.0, 0.0, 0.0]


def test_tree_segments_train_on_the_parents_text_and_drop_zero_advantages():
    adv = tree_advantages(TREE, tree_values(TREE, [None, None, None, 1, 0, 1, 1]))
    assert tree_segments(TREE, TOKENS, adv) == [
        (1, [], [10, 11], -0.25), (2, [], [20], 0.25),        # level 1: from the prompt alone
        (3, [10, 11], [30, 31], 0.5), (4, [10, 11], [40], -0.5)]   # level 2: prompt + a's tokens; b1, b2 dropped


def test_tree_leaves_at_different_depths():
    # the prompt -> a (1, ended early: a leaf, r=1), b (2); b -> b1 (3) r=0, b2 (4) r=1
    parent = [-1, 0, 0, 2, 2]
    v = tree_values(parent, [None, 1, None, 0, 1])
    assert v == [0.75, 1.0, 0.5, 0.0, 1.0]
    assert tree_advantages(parent, v) == [0.0, 0.25, -0.25, -0.5, 0.5]
    segs = tree_segments(parent, [[], [1], [2], [3], [4]], tree_advantages(parent, v))
    assert [(i, prefix) for i, prefix, _, _ in segs] == [(1, []), (2, []), (3, [2]), (4, [2])]


def test_a_tree_whose_rewards_all_agree_trains_nothing():
    for r in (0, 1):
        v = tree_values(TREE, [None, None, None, r, r, r, r])
        assert tree_segments(TREE, TOKENS, tree_advantages(TREE, v)) == []
        assert tree_segments(TREE, TOKENS, tree_advantages(TREE, v, std=True)) == []
    thirds = [-1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]      # 3-3: equal means of thirds round to the same float or not,
    v = tree_values(thirds, [None] * 4 + [1, 0, 0] * 3)    # and an advantage of rounding size is no advantage
    assert all(a == 0 for a in tree_advantages(thirds, v)[1:4])


def test_a_tree_training_step(tmp_path, monkeypatch):
    """--segment-partition tree end to end on the real model: one engine call a level; each trained row is the
    prompt + its ancestors' tokens -> its node's own tokens, with its node's advantage, and the trainer scores the
    rows as the engine sampled them (the free engine-vs-trainer check); a checkpoint resumes exactly."""
    import json
    import os

    import rollout
    from extensions import segment_po
    import train as T
    from logprobs import SYNC_TOLERANCE
    seen, calls = [], []
    real_collect, real_update, real_ids = (segment_po.TreeTrainer.collect, segment_po.TreeTrainer.update,
                                           rollout.HFEngine.generate_ids)

    def collect(self, batch, step, m):           # counts the engine calls of the tree's collection only
        calls.append(0)
        real_collect(self, batch, step, m)
        calls.append(None)

    def generate_ids(self, *a, **kw):
        if calls and calls[-1] is not None:
            calls[-1] += 1
        return real_ids(self, *a, **kw)

    def update(self, batch, step, m):
        seen.append(batch)
        real_update(self, batch, step, m)
    monkeypatch.setattr(segment_po.TreeTrainer, "collect", collect)
    monkeypatch.setattr(segment_po.TreeTrainer, "update", update)
    monkeypatch.setattr(rollout.HFEngine, "generate_ids", generate_ids)
    cfg = dict(algo="segment", segment_partition="tree", tree_branching="2,2", segment_size=4, n_train=4, n_eval=2,
               batch_size=8, max_completion_length=12, eval_k=1, engine="hf", save_every=1, **EASY)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    T.train(T.Config(steps=3, output_dir=full, **cfg))
    steps = [json.loads(x) for x in open(os.path.join(full, "metrics.jsonl")) if '"reward"' in x]
    assert len(steps) == 3 and len(seen) == 3
    assert [c for c in calls if c is not None] == [1 + (m["tree/nodes_l2"] > 0) for m in steps]   # a call a level
    for m, batch in zip(steps, seen):
        assert len(batch.trees) == 2 and m["tree/nodes_l1"] == 2
        rewards, adv = iter(batch.leaf_rewards), []
        for t in batch.trees:
            for i in range(1, len(t.parent)):     # truncated level-1 nodes have 2 children, the others none
                kids = [k for k, p in enumerate(t.parent) if p == i]
                cut = t.level[i] == 1 and t.samples[i].finish_reason == "length"
                assert len(kids) == (2 if cut else 0) and (not cut or len(t.samples[i].completion_ids) == 4)
            r = [None] * len(t.parent)
            for leaf in t.leaves():
                r[leaf] = next(rewards)
            adv += tree_advantages(t.parent, tree_values(t.parent, r))[1:]
        assert adv == batch.all_adv
        nodes = [(t.prompt_ids + t.path(t.parent[i]), t.samples[i].completion_ids, t.samples[i].logprobs)
                 for t in batch.trees for i in range(1, len(t.parent))]
        assert [(s.prompt_ids, s.completion_ids, s.logprobs) for s in batch.samples] == \
            [x for x, a in zip(nodes, adv) if a != 0]
        assert batch.adv.tolist() == pytest.approx([a for a in adv if a != 0])
        assert m["tree/segments_trained"] == len(batch.samples)
        assert m["tokens/generated"] == sum(len(c) for _, c, _ in nodes)
        if batch.samples:
            assert m["sync/mean"] < SYNC_TOLERANCE / 10, m       # rows scored as sampled: their prefixes are right
    assert any(batch.samples for batch in seen)
    # resume: 2 steps, then the third from the checkpoint, is the uninterrupted run
    T.train(T.Config(steps=2, output_dir=part, **cfg))
    T.train(T.Config(steps=3, output_dir=part, resume=part, **cfg))
    again = [json.loads(x) for x in open(os.path.join(part, "metrics.jsonl")) if '"reward"' in x]
    assert [(m["reward"], m.get("loss")) for m in again] == [(m["reward"], m.get("loss")) for m in steps]
