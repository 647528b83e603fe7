"""ValueTracker and rho: hand-worked steps of Eq. 5-7 and the official code's offline init."""
import json

import numpy as np
import pytest
import torch

from tracker import ValueTracker, ema_update, rho_from_drift


def test_rho_at_the_clamps_and_between():
    assert rho_from_drift(0.0) == 0.96                        # 2^0 = 1, clamped to rho_max
    assert rho_from_drift(0.003) == 0.96                      # 2^-0.05 = 0.9659 > 0.96
    assert rho_from_drift(0.006) == pytest.approx(0.9330329915368074, abs=1e-15)   # 2^-0.1
    assert rho_from_drift(0.01) == pytest.approx(0.8908987181403393, abs=1e-15)    # 2^-(1/6)
    assert rho_from_drift(0.06) == 0.875                      # 2^-1 = 0.5, clamped to rho_min
    np.testing.assert_array_equal(rho_from_drift(np.array([0.0, 0.06])), [0.96, 0.875])
    assert rho_from_drift(0.02, d_half=0.02, rho_min=0.1, rho_max=0.9) == 0.5
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="drift"):
            rho_from_drift(bad)


def test_offline_init_is_the_official_smoothed_mean():
    t = ValueTracker()
    t.init_from_offline(["p"], [[1, 0, 1, 1, 0, 0, 0, 0]])  # s = 3 of n0 = 8, N0 = 1/(1-0.875) = 8
    assert t.alpha[0] == pytest.approx(8 * 3.5 / 9)          # 28/9
    assert t.beta[0] == pytest.approx(8 * 5.5 / 9)           # 44/9
    assert t.value(["p"])[0] == pytest.approx(3.5 / 9)       # Jeffreys (s+0.5)/(n0+1), not 3/8
    assert t.effective_size(["p"])[0] == pytest.approx(8.0)
    t.init_from_offline(["zero", "all"], [[0] * 8, [1] * 8])
    np.testing.assert_allclose(t.value(["zero", "all"]), [0.5 / 9, 8.5 / 9])  # never exactly 0 or 1
    t.init_from_offline(["frac"], [[0.5, 0.25]])              # s = 0.75, n0 = 2: fractional outcomes
    assert t.value(["frac"])[0] == pytest.approx(1.25 / 3)


def test_three_steps_by_hand():
    t = ValueTracker()
    t.init_from_offline(["p"], [[1, 0, 1, 1, 0, 0, 0, 0]])   # alpha = 28/9, beta = 44/9
    # first visit: no drift -> rho = 0.96; reward 1
    assert t.update(["p"], [1.0]).tolist() == [0.96]
    a, b = 0.96 * 28 / 9 + 1, 0.96 * 44 / 9                  # 35.88/9, 42.24/9
    assert (t.alpha[0], t.beta[0]) == pytest.approx((a, b))
    assert t.value(["p"])[0] == pytest.approx(35.88 / 78.12)   # 0.45929...
    # drift 0.006 -> rho = 2^-0.1; reward 0
    rho = 0.9330329915368074
    assert t.update(["p"], [0.0], drifts=[0.006])[0] == pytest.approx(rho)
    a, b = rho * a, rho * b + 1
    assert (t.alpha[0], t.beta[0]) == pytest.approx((a, b))
    # large drift -> rho = 0.875 (forget fast); reward 1
    t.update(["p"], [1.0], drifts=[0.5])
    a, b = 0.875 * a + 1, 0.875 * b
    assert (t.alpha[0], t.beta[0]) == pytest.approx((a, b))
    assert t.effective_size(["p"])[0] == pytest.approx(0.875 * (rho * (0.96 * 8 + 1) + 1) + 1)
    assert t.visits.tolist() == [3]


def test_unseen_key_prior_and_creation():
    t = ValueTracker()
    assert t.value(["new"])[0] == 0.5 and "new" not in t and len(t) == 0   # reading does not store
    assert t.effective_size(["new"])[0] == 1.0
    t.update(["new"], [1.0])                                  # alpha = 0.96*0.5 + 1, beta = 0.48
    assert "new" in t and len(t) == 1
    assert t.value(["new"])[0] == pytest.approx(1.48 / 1.96)


def test_repeated_key_in_one_call_applies_in_order():
    once, twice = ValueTracker(), ValueTracker()
    for t in (once, twice):
        t.init_from_offline(["a", "b"], [[1, 0], [0, 0]])
    once.update(["a", "b", "a", "a"], [1.0, 0.0, 0.0, 1.0], drifts=[0.0, 0.01, 0.006, 0.5])
    for k, r, d in [("a", 1.0, 0.0), ("b", 0.0, 0.01), ("a", 0.0, 0.006), ("a", 1.0, 0.5)]:
        twice.update([k], [r], drifts=[d])
    np.testing.assert_allclose(once.alpha, twice.alpha, rtol=0, atol=1e-15)
    np.testing.assert_allclose(once.beta, twice.beta, rtol=0, atol=1e-15)
    assert once.visits.tolist() == [3, 1]


def test_ema_form_equals_beta_form():
    """Eq. 7 with eta = 1/(rho*N_eff + 1), N_eff = alpha + beta, gives Eq. 5's v_hat for r in [0,1]."""
    rng = np.random.default_rng(0)
    t = ValueTracker()
    t.init_from_offline(range(50), rng.integers(0, 2, size=(50, 8)))
    v, n = t.value(range(50)), t.effective_size(range(50))
    for _ in range(200):
        r = rng.random(50)                                    # non-binary rewards
        rho = t.update(range(50), r, drifts=rng.exponential(0.006, 50))
        v, n = ema_update(v, n, r, rho)
    np.testing.assert_allclose(t.value(range(50)), v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t.effective_size(range(50)), n, rtol=0, atol=1e-9)


@pytest.mark.parametrize("drift,rho", [(0.0, 0.96), (1.0, 0.875)])
def test_effective_size_equilibrium(drift, rho):
    """N_k = rho N_{k-1} + 1 -> 1/(1-rho): 25 at rho_max, 8 at rho_min (the window sizes of App. D)."""
    t = ValueTracker()
    t.init_from_offline(["p"], [[1] * 8])                      # N0 = 8
    for _ in range(600):
        t.update(["p"], [1.0], drifts=[drift])
    assert t.effective_size(["p"])[0] == pytest.approx(1 / (1 - rho), abs=1e-6)


def test_bad_inputs_name_the_prompt():
    t = ValueTracker()
    with pytest.raises(ValueError, match="'q7'.*1.5"):
        t.update(["q6", "q7"], [1.0, 1.5])
    with pytest.raises(ValueError, match="'q8'.*nan"):
        t.update(["q8"], [float("nan")])
    with pytest.raises(ValueError, match="'q9'.*-1"):
        t.update(["q9"], [-1.0])                              # ReTool-style -1 rewards corrupt alpha/beta
    with pytest.raises(ValueError, match="drift for prompt 'q1'"):
        t.update(["q1"], [1.0], drifts=[-0.1])
    with pytest.raises(ValueError, match="2 keys but 1 rewards"):
        t.update(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="'empty'"):
        t.init_from_offline(["empty"], [[]])
    with pytest.raises(ValueError, match="'two'.*\\[0.0, 2.0\\]"):
        t.init_from_offline(["two"], [[0, 2]])
    with pytest.raises(ValueError, match="rho_min"):
        ValueTracker(rho_min=0.99, rho_max=0.96)
    assert len(t) == 0                                         # nothing half-applied


def test_state_dict_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    t = ValueTracker(rho_min=0.8, d_half=0.05)
    keys = [f"prompt {i}" for i in range(30)]
    t.init_from_offline(keys, rng.integers(0, 2, size=(30, 8)))
    t.update(keys[:10], rng.integers(0, 2, 10), drifts=rng.exponential(0.01, 10))
    via_json = ValueTracker()
    via_json.load_state_dict(json.loads(json.dumps(t.state_dict())))
    torch.save(t.state_dict(), tmp_path / "t.pt")
    via_torch = ValueTracker()
    via_torch.load_state_dict(torch.load(tmp_path / "t.pt"))
    for u in (via_json, via_torch):
        assert u.keys == t.keys and (u.rho_min, u.d_half) == (0.8, 0.05)
        assert np.array_equal(u.alpha, t.alpha) and np.array_equal(u.beta, t.beta)
        assert np.array_equal(u.visits, t.visits)
        u.update(keys[:3], [1, 0, 1], drifts=[0.01, 0.0, 0.02])   # and keeps working identically
    t.update(keys[:3], [1, 0, 1], drifts=[0.01, 0.0, 0.02])
    assert np.array_equal(via_json.alpha, t.alpha)


def test_many_prompts_grow_storage():
    t = ValueTracker()
    keys = [f"k{i}" for i in range(1000)]
    t.init_from_offline(keys[:10], [[1, 0]] * 10)
    t.update(keys, np.ones(1000))
    assert len(t) == 1000 and t.value().shape == (1000,)
    assert t.value(["k0"])[0] == pytest.approx((0.96 * 8 * 1.5 / 3 + 1) / (0.96 * 8 + 1))
    assert t.value(["k999"])[0] == pytest.approx(1.48 / 1.96)
