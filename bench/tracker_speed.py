"""Per-step cost of SPO's bookkeeping on a 1 M-prompt pool: read every v_hat, weight (Eq. 11),
draw a batch without replacement, update the batch's trackers (Eq. 5). Goal: <= 50 ms a step.

    python bench/tracker_speed.py [--pool 1000000] [--batch 2048] [--repeats 20]

Prints the median of --repeats steps for each part, and the cost of updating all 1 M prompts at once.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampler import PrioritizedSampler, priority_weights  # noqa: E402
from tracker import ValueTracker  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=2048, help="the paper's SPO batch")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()

    rng = np.random.default_rng(0)
    keys = [f"prompt {i}: what is {i} + {i}?" for i in range(a.pool)]
    tracker, sampler = ValueTracker(), PrioritizedSampler(seed=0)
    t0 = time.perf_counter()
    tracker.init_from_offline(keys, rng.integers(0, 2, size=(a.pool, 8)))
    init_s = time.perf_counter() - t0

    parts = {"read all v_hat": [], "weights (Eq. 11)": [], "sample batch": [], "update batch (Eq. 5)": []}
    for _ in range(a.repeats):
        t = [time.perf_counter()]
        v = tracker.value();                                    t.append(time.perf_counter())
        w = priority_weights(v);                                t.append(time.perf_counter())
        idx = sampler.sample(w, a.batch);                       t.append(time.perf_counter())
        batch = [tracker.keys[i] for i in idx]
        tracker.update(batch, rng.integers(0, 2, a.batch), rng.exponential(0.006, a.batch))
        t.append(time.perf_counter())
        for name, t0_, t1_ in zip(parts, t, t[1:]):
            parts[name].append(t1_ - t0_)
    t0 = time.perf_counter()
    tracker.update(keys, rng.integers(0, 2, a.pool), rng.exponential(0.006, a.pool))
    full_s = time.perf_counter() - t0

    med = {k: 1e3 * float(np.median(v)) for k, v in parts.items()}
    total = 1e3 * float(np.median([sum(x) for x in zip(*parts.values())]))
    print(f"pool {a.pool:,} prompts, batch {a.batch}, median of {a.repeats} steps "
          f"({os.cpu_count()} cores, numpy {np.__version__})")
    for k, v in med.items():
        print(f"  {k:<22} {v:8.2f} ms")
    print(f"  {'step total':<22} {total:8.2f} ms   (goal <= 50 ms: {'met' if total <= 50 else 'MISSED'})")
    print(f"  offline init of the pool      {init_s * 1e3:8.0f} ms (once)")
    print(f"  update all {a.pool:,} keys    {full_s * 1e3:8.0f} ms (key lookups dominate)")


if __name__ == "__main__":
    main()
