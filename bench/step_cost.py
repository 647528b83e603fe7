"""Time and peak memory of one training step, split into its parts, at the default size and at 4x the
response length; checks that tracker + sampler bookkeeping stays <= 1 % of the step.

    python bench/step_cost.py [--steps 4] [--algo spo]

Each size runs in a fresh process (`train.train` with no offline init and no evaluation, so only steps
are timed); figures are medians over the steps after the first (warm-up). Peak memory is the process's
maximum resident set size, model load included. Run it alone: two torch processes slow each other ~10x.
"""
import argparse
import os
import resource
import sys

from child import emit, run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["time/draw", "time/tracker", "time/generate", "time/old_logprobs", "time/train", "time/drift"]


def child(length: int, steps: int, algo: str, out_dir: str) -> None:
    sys.path.insert(0, ROOT)
    import numpy as np
    import train as T
    res = T.train(T.Config(algo=algo, steps=steps, max_completion_length=length, offline_samples=0, n_eval=0, sft_steps=0,
                           eval_every=0, save_every=0, output_dir=out_dir, sync_check_every=0,
                           overwrite=True))
    rows = res["history"][1:] or res["history"]
    med = {k: float(np.median([r.get(k, 0.0) for r in rows])) for k in PARTS + ["time/step", "response_length"]}
    med["bookkeeping"] = med["time/draw"] + med["time/tracker"]            # sampler draw + tracker update
    med["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    emit(med)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--algo", default="spo")
    p.add_argument("--base-length", type=int, default=None, help="default: train.py's --max-completion-length")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default="/tmp/spo-step-cost")
    a = p.parse_args()
    if a.base_length is None:
        sys.path.insert(0, ROOT)
        import config
        a.base_length = config.Config().max_completion_length
    if a.child is not None:
        return child(a.child, a.steps, a.algo, a.out_dir)
    rows = []
    for length in (a.base_length, 4 * a.base_length):
        rows.append((length, run_child(__file__, "--child", length, "--steps", a.steps, "--algo", a.algo,
                                       "--out-dir", f"{a.out_dir}/{length}")))
    print(f"\n{a.algo.upper()} step on SmolLM2-135M + LoRA r=16, batch 16, CPU ({os.cpu_count()} cores), "
          f"median of steps 2..{a.steps}\n")
    print("| max new tokens | mean length | tracker+sampler | generate | old logp | PPO update | drift pass "
          "| step | tracker share | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|")
    for length, m in rows:
        share = m["bookkeeping"] / m["time/step"]
        print(f"| {length} | {m['response_length']:.0f} | {1e3 * m['bookkeeping']:.1f} ms | {m['time/generate']:.1f} s "
              f"| {m['time/old_logprobs']:.1f} s | {m['time/train']:.1f} s | {m['time/drift']:.1f} s "
              f"| {m['time/step']:.1f} s | {share:.3%} "
              f"| {m['peak_rss_gib']:.1f} GiB |")
        if share > 0.01:
            print(f"  tracker+sampler share {share:.2%} exceeds the 1 % goal")


if __name__ == "__main__":
    main()
