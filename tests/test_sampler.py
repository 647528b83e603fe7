"""Prioritised sampling (Eq. 11): weights by hand, draw frequencies, no duplicates, resumable RNG."""
import json

import numpy as np
import pytest

from sampler import PrioritizedSampler, priority_weights


def test_priority_weights_by_hand():
    # sqrt(0*1)=0, sqrt(.25)=.5, sqrt(.09)=.3, sqrt(.1875)=.4330..., each + 0.05
    np.testing.assert_allclose(priority_weights([0.0, 0.5, 0.1, 0.75]),
                               [0.05, 0.55, 0.35, 0.4330127018922193 + 0.05])
    np.testing.assert_allclose(priority_weights([0.5], epsilon=0.0), [0.5])
    with pytest.raises(ValueError, match="index 1 is 1.2"):
        priority_weights([0.5, 1.2])
    with pytest.raises(ValueError, match="index 0 is nan"):
        priority_weights([float("nan")])


def test_single_draw_frequencies_are_proportional_to_weight():
    """batch_size=1: P(i) = w_i / sum(w). Pearson chi-square, 3 degrees of freedom, 40 000 draws;
    the 0.1 % critical value is 16.27, so a correct sampler passes this fixed seed with p > 0.999,
    while a uniform sampler would score ~ 8 000."""
    w = np.array([1.0, 2.0, 3.0, 4.0])
    s = PrioritizedSampler(seed=0)
    counts = np.bincount([s.sample(w, 1)[0] for _ in range(40_000)], minlength=4)
    expected = 40_000 * w / w.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.27, (counts, chi2)


def test_batch_inclusion_matches_sequential_draws_without_replacement():
    """B=2 from w = (1, 2, 3), p = (1/6, 2/6, 3/6). Drawing in sequence without replacement (the
    official np.random.choice(replace=False, p=...)), P(i in batch) = p_i + sum_j p_j p_i / (1 - p_j):
      P(0) = 1/6 + (2/6)(1/6)/(4/6) + (3/6)(1/6)/(3/6) = 5/12
      P(1) = 2/6 + (1/6)(2/6)/(5/6) + (3/6)(2/6)/(3/6) = 11/15
      P(2) = 3/6 + (1/6)(3/6)/(5/6) + (2/6)(3/6)/(4/6) = 17/20
    (not 1/3, 2/3, 1). 30 000 batches: std of each share <= 0.003, tolerance 0.012 = 4 std."""
    s = PrioritizedSampler(seed=1)
    n = 30_000
    hits = np.zeros(3)
    first = np.zeros(3)
    for _ in range(n):
        idx = s.sample([1.0, 2.0, 3.0], 2)
        hits[idx] += 1
        first[idx[0]] += 1
    np.testing.assert_allclose(hits / n, [5 / 12, 11 / 15, 17 / 20], atol=0.012)
    np.testing.assert_allclose(first / n, [1 / 6, 2 / 6, 3 / 6], atol=0.012)   # draw order kept


def test_no_duplicates_and_whole_pool():
    s = PrioritizedSampler(seed=2)
    w = np.random.default_rng(0).random(120) + 0.05
    for _ in range(200):
        idx = s.sample(w, 100)
        assert len(set(idx.tolist())) == 100 and idx.min() >= 0 and idx.max() < 120
    assert sorted(s.sample(w, 120).tolist()) == list(range(120))
    u = s.shuffled(50, 50)
    assert sorted(u.tolist()) == list(range(50))


def test_shuffled_draws_every_prompt_once_per_epoch():
    s = PrioritizedSampler(seed=3)
    batches = [s.shuffled(12, 4).tolist() for _ in range(30)]        # 3 batches per epoch, 10 epochs
    for e in range(10):
        assert sorted(sum(batches[3 * e:3 * e + 3], [])) == list(range(12))
    assert batches[:3] != batches[3:6]                               # a fresh permutation each epoch
    counts = np.zeros(10, int)                                       # batches straddling epochs (10 / 3)
    for _ in range(200):
        b = s.shuffled(10, 3)
        assert len(set(b.tolist())) == 3
        counts[b] += 1
        assert counts.max() - counts.min() <= 1                      # never a prompt twice ahead of another


def test_shuffled_passes_over_excluded_and_keeps_them_first():
    s = PrioritizedSampler(seed=5)
    first = s.shuffled(8, 2)                                         # the epoch's order starts with these
    epoch = first.tolist() + s.queue[:6]
    b = s.shuffled(8, 3, exclude={epoch[2]})
    assert b.tolist() == epoch[3:6]                                  # excluded one passed over...
    assert s.shuffled(8, 1).tolist() == [epoch[2]]                   # ...and drawn first once free
    with pytest.raises(ValueError, match="batch_size=3.*2 prompts"):
        s.shuffled(4, 3, exclude=[0, 1])


def test_state_round_trip_draws_the_same_batches():
    s = PrioritizedSampler(seed=4)
    w = np.linspace(0.05, 0.55, 40)
    s.sample(w, 8)
    s.shuffled(40, 5)                                            # mid-epoch: the queue is state too
    state = json.loads(json.dumps(s.state_dict()))               # JSON-able
    ahead = [s.sample(w, 8).tolist() for _ in range(3)] + [s.shuffled(40, 5).tolist() for _ in range(9)]
    r = PrioritizedSampler(seed=999)
    r.load_state_dict(state)
    assert [r.sample(w, 8).tolist() for _ in range(3)] + [r.shuffled(40, 5).tolist() for _ in range(9)] == ahead
    assert PrioritizedSampler(seed=4).sample(w, 8).tolist() != PrioritizedSampler(seed=5).sample(w, 8).tolist()


def test_bad_inputs():
    s = PrioritizedSampler()
    with pytest.raises(ValueError, match="batch_size=5.*4 prompts"):
        s.sample([1, 1, 1, 1], 5)
    with pytest.raises(ValueError, match="batch_size=0"):
        s.sample([1, 1], 0)
    with pytest.raises(ValueError, match="batch_size=3.*2 prompts"):
        s.shuffled(2, 3)
    for bad, msg in [([1, 0, 1], "index 1 is 0.0"), ([1, -1], "index 1 is -1.0"),
                     ([float("nan"), 1], "index 0 is nan"), ([1, float("inf")], "index 1 is inf")]:
        with pytest.raises(ValueError, match=msg):
            s.sample(bad, 1)
