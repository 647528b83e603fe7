"""The agentic simulation's batch-assembly rules, on the paper's own numbers (§5.4)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from agentic_sim import PAPER_GROUP_TIMES, group_based, group_free  # noqa: E402


def test_group_based_waits_for_whole_groups():
    # 6 groups of 8; each group's slowest member sets its finish time (Fig. 5); 24 samples = 3 groups
    rng = np.random.default_rng(0)
    lat = np.concatenate([np.r_[rng.uniform(60, t - 1, 7), t] for t in PAPER_GROUP_TIMES])[None]   # [1, 48]
    assert group_based(lat, 8, 3).tolist() == [486.0]
    assert group_based(lat, 8, 1).tolist() == [130.0] and group_based(lat, 8, 6).tolist() == [553.0]


def test_group_free_takes_the_first_finishers():
    lat = np.arange(48, 0, -1, dtype=float)[None] * 10       # 480, 470, ..., 10
    assert group_free(lat, 24).tolist() == [240.0]          # the 24th fastest
    assert group_free(lat, 48).tolist() == [480.0]          # no over-sampling: wait for all
    lat2 = np.stack([lat[0], lat[0][::-1]])                  # [trials, n] handled per row
    assert group_free(lat2, 1).tolist() == [10.0, 10.0]


# ---------------------------------------------------------------- policy_sim: the algorithm at scale

from policy_sim import REGIMES, run  # noqa: E402


def test_tracker_baseline_halves_variance_and_waste_on_a_slow_heterogeneous_pool():
    # the paper's setting, smaller: prompts of widely spread difficulty, a slowly moving policy
    regime = dict(REGIMES["paper"], prompts=1024, heldout=256, batch=128, steps=40, groups=(8,))
    spo, grpo = run(regime, "SPO 128x1", 0), run(regime, "GRPO 16x8", 0)
    assert spo["raw_var"] < 0.7 * spo["nobase_var"]             # paper Fig. 3: ~50 % lower than r alone
    assert spo["brier"] < 0.7 * spo["nobase_var"]               # v_hat predicts r better than the batch mean
    assert grpo["waste"] > 0.4 and spo["waste"] < grpo["waste"] / 3
    assert spo["curve"][-1][1] > spo["curve"][0][1] + 0.01       # and it learns


def test_tracker_lags_a_fast_policy_on_a_homogeneous_pool():
    # the embedded task's regime: near-equal prompts, 40 pts in 10 steps -> v_hat is a worse
    # baseline than the batch mean and removes no variance (what bench/compare.py measures)
    rs = [run(REGIMES["cpu-toy"], "SPO 16x1", s) for s in range(3)]
    assert all(r["brier"] > r["nobase_var"] for r in rs)
    assert sum(r["raw_var"] for r in rs) > 0.9 * sum(r["nobase_var"] for r in rs)


def test_vs_trl_pairs_each_spo_arm_with_each_peer_by_seed():
    from vs_trl import report

    def row(arm, seed, end, greedy=0.5):
        ev = lambda a, g: {"eval/avg@4": a, "eval/greedy": g}
        return {"arm": arm, "seed": seed, "steps": 40, "start": ev(0.25, 0.25), "end": ev(end, greedy), "s_per_step": 9.0}
    rows = [row("TRL GRPO 4x4", 0, 0.75), row("TRL GRPO 4x4", 1, 0.875),
            row("our SPO (default)", 0, 0.875), row("our SPO (default)", 1, 0.75),
            row("our SPO (short window)", 0, 1.0),               # one seed: paired on seed 0 only
            row("our SPO (pool 64)", 0, 0.5)]                    # another held-out set: paired with none
    for seed, (a20, g20) in enumerate([(0.5, 0.5), (0.75, 1.0)]):   # --eval-every 20: TRL's curve on both seeds
        r = rows[seed]
        r["curve"] = [{"step": 0, **r["start"]}, {"step": 20, "eval/avg@4": a20, "eval/greedy": g20}, {"step": 40, **r["end"]}]
    out = report(rows, 40, 32, [0.6, 0.95])
    assert "40 steps x 16 responses, held-out 32 problems (avg@4 at T = 0.6, top-p 0.95 | greedy)" in out
    # diffs +0.125, -0.125: mean 0, s.e. = stdev 0.1768 / sqrt 2 = 0.125
    assert ("our SPO (default) - TRL GRPO 4x4, eval/avg@4, paired by seed: +0.000 +/- 0.125 "
            "(s.e., 2 seeds; SPO ahead in 1, tied in 0)") in out
    assert "our SPO (default) - TRL GRPO 4x4, eval/greedy, paired by seed: +0.000 +/- 0.000 (s.e., 2 seeds; SPO ahead in 0, tied in 2)" in out
    assert "our SPO (short window) - TRL GRPO 4x4, eval/avg@4, paired by seed: +0.250 +/- nan (s.e., 1 seeds" in out
    # the ablation against the default on their common seed 0: 1.0 - 0.875
    assert "our SPO (short window) - our SPO (default), eval/avg@4, paired by seed: +0.125 +/- nan (s.e., 1 seeds" in out
    assert "our GRPO" not in out                                  # an arm with no runs has no row and no pairs
    assert "| our SPO (pool 64) | 0.250 / 0.250 | 0.50 |" in out and "our SPO (pool 64) -" not in out
    assert "| TRL GRPO 4x4 | 0.250 / 0.250 | 0.75 0.88 | 0.50 0.50 | **0.812 / 0.500** | 9.0 |" in out
    # the median curve: step 20 is the median of 0.5 and 0.75 (greedy 0.5 and 1.0); arms without a curve have no row
    assert "| arm | step 0 | step 20 | step 40 |" in out
    assert "| TRL GRPO 4x4 | 0.250 / 0.250 | 0.625 / 0.750 | 0.812 / 0.500 |" in out
    assert "| our SPO (default) | 0.250" not in out.split("held-out along the run")[1]


def test_fact_coverage_keys_a_problem_by_its_fact_and_probes_beyond_the_held_out_set():
    from data import Task, embedded_tasks
    from fact_coverage import fact
    q = " Answer with just the number."
    # sums are unordered and their wording is not part of the fact; a difference is ordered
    assert fact(Task("What is 3 + 9?" + q, "12", 1)) == fact(Task("What is 9 + 3?" + q, "12", 1)) == ("+", (3, 9))
    assert fact(Task("Tom has 9 coins and gets 3 more. How many coins does Tom have now?" + q, "12", 4)) == ("+", (3, 9))
    assert fact(Task("What is 9 - 3?" + q, "6", 2)) == ("-", (9, 3)) != fact(Task("What is 3 + 6?" + q, "9", 1))
    assert fact(Task("What is 2 + 5 + 1?" + q, "8", 5)) == ("+", (1, 2, 5))
    # the probe is the held-out set and more draws after it, never a pool prompt
    for seed in (0, 3):
        pool, held = embedded_tasks(32, 32, seed)
        pool2, probe = embedded_tasks(32, 200, seed)
        assert pool2 == pool and probe[:32] == held and len(probe) == 200
        assert not {t.prompt for t in pool} & {t.prompt for t in probe}


# ---------------------------------------------------------------- async_speedup's tool server

def test_latency_sandbox_answers_like_sandboxfusion_after_its_seeded_long_tailed_latency():
    import time
    from concurrent.futures import ThreadPoolExecutor
    from latency_sandbox import LatencySandbox, latencies, set_latency
    from extensions.sandbox import run_code_remote
    with LatencySandbox(scale=0.004, on=False) as box:
        assert box.url.startswith("http://127.0.0.1:")
        assert run_code_remote("print(6 * 7)", box.url) == "42\n"               # the project's sandbox, remotely
        assert "ZeroDivisionError" in run_code_remote("1 / 0", box.url)
        set_latency(box.url, True, seed=5)
        want = latencies(0.004, 5, 8)                                           # the draws, in call order
        assert np.allclose([box.draw() for _ in range(8)], want)
        set_latency(box.url, True, seed=5)
        t0 = time.time()
        assert run_code_remote("print(1)", box.url) == "1\n" and time.time() - t0 >= want[0]
        set_latency(box.url, True, seed=6)
        lat = latencies(0.004, 6, 12)
        t0 = time.time()
        with ThreadPoolExecutor(12) as pool:                                    # waiting costs no CPU: calls overlap
            assert list(pool.map(lambda i: run_code_remote(f"print({i})", box.url), range(12))) == \
                [f"{i}\n" for i in range(12)]
        wall = time.time() - t0
        assert lat.max() <= wall < lat.max() + 0.5 * lat.sum()
        assert lat.max() / np.median(lat) > 2                                  # a long tail: the slowest sets the wall


def test_latency_sandbox_runs_the_code_no_longer_than_its_own_cap_whatever_the_client_waits():
    """The bench's client sets run_timeout high to wait out the latency's tail; code that loops must still be
    stopped at the server's code_timeout, not burn the trainer's CPU for run_timeout seconds."""
    import time
    from latency_sandbox import LatencySandbox
    from extensions.sandbox import run_code_remote
    with LatencySandbox(scale=0.0, on=False, code_timeout=1.0) as box:
        t0 = time.time()
        out = run_code_remote("while True:\n    pass", box.url, timeout=300.0)
        assert "TimeoutError" in out and time.time() - t0 < 5


def test_latency_sandbox_answers_a_burst_of_simultaneous_calls():
    """A lock-step batch's tool calls arrive at once; each must be answered (a reset connection would be scored
    as the policy's wrong answer). Raw HTTP, no client retry: the server alone must take the burst."""
    import json
    import threading
    import urllib.request
    from latency_sandbox import LatencySandbox
    n, outs = 64, [None] * 64
    start = threading.Barrier(n)

    def call(i):
        req = urllib.request.Request(box.url, data=json.dumps({"code": f"print({i})"}).encode(),
                                     headers={"Content-Type": "application/json"})
        start.wait()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                outs[i] = json.loads(r.read())["run_result"]["stdout"]
        except OSError as e:
            outs[i] = repr(e)
    with LatencySandbox(scale=0.01, on=False) as box:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert outs == [f"{i}\n" for i in range(n)]


def test_vs_trl_reports_what_the_baseline_did_and_keys_rows_by_setting():
    from vs_trl import OLD_SETTING, overrides, report, setting_of

    def row(arm, seed, **figs):
        ev = {"eval/avg@4": 0.5, "eval/greedy": 0.5}
        return {"arm": arm, "seed": seed, "steps": 40, "start": ev, "end": ev, "s_per_step": 9.0, **figs}
    rows = [row("our SPO (default)", 0, var_ratio=0.5, brier_2nd=0.1, nobase_var_2nd=0.2),
            row("our SPO (default)", 1, var_ratio=0.7, brier_2nd=0.3, nobase_var_2nd=0.2),
            row("our GRPO 4x4", 0, var_ratio=0.4, degenerate=0.6, live_var=0.2, nobase_var_2nd=0.2),
            row("TRL GRPO 4x4", 0)]                                       # TRL records no figures: no row
    out = report(rows, 40, 32, [0.6, 0.95]).split("the baseline, median over the seeds")[1]
    assert "| our SPO (default) | 0.60 | 0.200 vs 0.200 | — | — |" in out
    assert "| our GRPO 4x4 | 0.40 | — | 0.60 | 0.200 |" in out and "| TRL GRPO 4x4 |" not in out
    assert overrides(["learning_rate=5e-5", "sft_steps=20", "embedded_levels=3,5"]) == \
        {"learning_rate": 5e-5, "sft_steps": 20, "embedded_levels": "3,5"}
    assert setting_of({}) == OLD_SETTING and setting_of({"setting": {"n_train": 128}}) == {"n_train": 128}


def test_tir_learns_gain_is_the_median_spo_gain_and_pairs_spo_with_grpo_by_seed():
    import tir_learns as B
    series = {k: [0.5, 0.5, 1.0, 1.0] for k in B.SERIES}
    def row(arm, seed, start, end):
        ev = lambda x: {"eval/avg@4": x, "eval/greedy": x / 2, "eval/avg@4_level1": x, "eval/avg@4_level4": 0.0}  # noqa: E731
        return {"arm": arm, "seed": seed, "setting": B.SETTING, "start": ev(start), "end": ev(end), "rl_s": 60.0,
                "series": series, "var_ratio": 1.0, "nobase_var_2nd": 0.1}
    rows = [row("SPO tools", 0, 0.5, 0.9), row("SPO tools", 1, 0.4, 0.6), row("SPO tools", 2, 0.5, 0.6),
            row("GRPO 4x4 tools", 0, 0.5, 0.7), row("GRPO 4x4 tools", 2, 0.5, 0.8), row("SPO no tools", 0, 0.0, 0.0)]
    text = B.report(rows, [])
    assert text.strip().splitlines()[-1].startswith("tir gain 0.200 ")              # median of 0.4, 0.2, 0.1
    assert "greedy +0.100" in text.strip().splitlines()[-1]
    # SPO minus GRPO at the end, only on the seeds both ran (0 and 2): +0.2 and -0.2
    assert "avg@4 at the end, SPO tools minus GRPO 4x4 tools: +0.000 ± 0.200 (paired by seed: +0.200, -0.200)" in text
    assert "| SPO no tools | 0 | 0.000 → 0.000 | 0.000 → 0.000 | 0.50 → 1.00 | — |" in text   # no tool columns


def test_async_speedup_reports_the_median_paired_rate_ratio_and_the_simulation_beside_it():
    import async_speedup as B

    def row(arm, seed, rate, wait=0.0):
        ev = {"eval/avg@2": 0.5, "eval/greedy": 0.5}
        r = {"arm": arm, "seed": seed, "scale": 0.08, "steps": 4, "tokens": 96, "lr": 5e-5, "start": ev, "end": dict(ev),
             "responses": 64,
             "responses_per_s": rate, "s_per_batch": 16 / rate, "generate_s": 10.0, "train_s": 5.0,
             "len_trained": 40.0, "reward_trained": 0.5, "len": 40.0, "reward": 0.5, "truncated": 0.125}
        if "lock-step" in arm:
            return {**r, "tool_wait_s": wait}
        return {**r, "tool_s_trained": 5.0, "tool_s": 6.0, "waited_due_s": 1.0, "staleness": 0.9,
                "staleness_max": 2, "dropped": 0, "launched": 80}
    rows = []
    for seed, (lock, free) in enumerate([(0.2, 0.5), (0.1, 0.3), (0.2, 0.3)]):   # ratios 2.5, 3.0, 1.5
        rows += [row("GRPO lock-step", seed, lock, wait=50.0), row("SPO continuous F=2", seed, free),
                 row("SPO lock-step", seed, lock, wait=50.0)]
    rows[4]["end"] = {"eval/avg@2": 0.75, "eval/greedy": 0.5}          # seed 1, F = 2 ahead of lock-step by 0.25
    text = B.report(rows, ["--seeds", "3"])
    # paired by seed: the median of the per-seed ratios 2.5, 3.0, 1.5 (the ratio of the median rates would be 1.50)
    assert text.rstrip().splitlines()[-1].startswith("speedup 2.50 ")
    assert "SPO lock-step 1.00x" in text and "not in this table" not in text
    assert "4 steps x 16 trained responses per arm, 96 tokens a response, learning rate 5e-05" in text
    assert "| 40.0 vs 40.0 | 0.50 vs 0.50 | 0.12 | 0.90/2 (0) |" in text     # the share cut by the budget, per run
    assert "held-out avg@2 at the end, SPO continuous F=2 minus SPO lock-step, per seed: +0.000, +0.250, +0.000" in text
    p = B.predicted(0.08)                                                # the report's own draws (seeded)
    assert p["lockstep_s"] > 2 * p["free_s"]                             # the long tail: the slowest of 16 waits
    cpu = 16 / 0.2 - 50.0                                                # a lock-step batch's non-tool seconds
    assert f"seed 0: 30.0 s, predicts {(cpu + p['lockstep_s']) / (cpu + p['free_s']):.2f}x, measured 2.50x" in text
    cpu1 = 16 / 0.1 - 50.0                                               # seed 1's own (slower) compute
    assert f"seed 1: 110.0 s, predicts {(cpu1 + p['lockstep_s']) / (cpu1 + p['free_s']):.2f}x, measured 3.00x" in text


def test_async_speedup_writes_another_settings_report_beside_the_defaults():
    from async_speedup import DEFAULTS, SETTING, report_name
    this = {k: DEFAULTS[k] for k in SETTING}
    assert report_name(this) == "latency.md"
    assert report_name({**this, "scale": 0.16}) == "latency-scale0.16.md"
    assert report_name({**this, "scale": 0.16, "steps": 8}) == "latency-scale0.16-steps8.md"


def test_async_speedup_times_a_seeds_arms_on_one_machine():
    from async_speedup import one_machine
    arms = ["SPO lock-step", "GRPO lock-step"]
    r = lambda arm, seed, m=None: {"arm": arm, "seed": seed, **({"machine": m} if m else {})}   # noqa: E731
    log = [r("SPO lock-step", 0), r("GRPO lock-step", 0),            # seed 0: complete on an earlier machine
           r("SPO lock-step", 1),                                    # seed 1: begun there ...
           r("GRPO lock-step", 1, "b")]                              # ... continued on machine b
    kept, aside = one_machine(log, arms, "b")                        # running on b: seed 1's SPO arm again
    assert kept == [log[0], log[1], log[3]] and aside == [log[2]]
    kept, aside = one_machine(log, arms, "c")                        # on c: all of seed 1 again, seed 0 kept
    assert kept == log[:2] and aside == log[2:]
    log.append(r("SPO lock-step", 1, "b"))                           # b completes seed 1
    kept, aside = one_machine(log, arms, None)                       # the report: seed 1 as timed on b
    assert kept == [log[0], log[1], log[3], log[4]] and aside == [log[2]]
    assert one_machine(log, arms, "c") == (kept, aside)              # complete seeds are not run again
