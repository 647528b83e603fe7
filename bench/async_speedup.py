"""No synchronisation barrier, measured: continuous group-free collection against lock-step, on real vLLM.

    python bench/async_speedup.py                      # 5 arms, 1 seed, ~30 min on 2 cores
    python bench/async_speedup.py --seeds 2 --steps 12

Workload with a long tail: the embedded task with a long response budget (--max-completion-length 96): most
responses answer in ~15 tokens, a few ramble to the budget, so a lock-step batch waits for its rambler.
Every arm trains the embedded model with vLLM (CPU) for --steps steps of 16 trained responses (same model,
LoRA, learning rate, loss), each run its own process:

    SPO lock-step              one response per prompt, the batch waits for its longest response
    SPO continuous F=1.5, 1.75 F x 16 trajectories in flight; a batch is the first 16 to land (collector.py)
    GRPO lock-step             4 prompts x 4, waits for the longest
    GRPO first-groups F=1.5    the first 4 groups whose 4 members all landed (the paper's Fig. 5 scheme)

Prints a table and `speedup <x>`: trained responses per second of loop wall time (the sum of the steps' wall
time: collection, update, tracker, adapter swap; evaluations and the offline init excluded), SPO continuous
(F = 1.5) over GRPO lock-step. Writes bench/results/async/{runs.jsonl, async.md}.
"""
import argparse
import json
import os
import statistics
import sys

from child import emit, run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = {
    "SPO lock-step": dict(algo="spo"),
    "SPO continuous F=1.5": dict(algo="spo", collect="continuous", oversample=1.5),
    "SPO continuous F=1.75": dict(algo="spo", collect="continuous", oversample=1.75),   # F=2 would keep all 32
                                                                                       # prompts of the pool busy
    "GRPO lock-step": dict(algo="grpo", group_size=4),
    "GRPO first-groups F=1.5": dict(algo="grpo", group_size=4, collect="continuous", oversample=1.5),
}


def one(arm: str, seed: int, a) -> dict:
    import train as T
    out = f"/tmp/spo-async/{arm.replace(' ', '_').replace('=', '')}-s{seed}"
    cfg = T.Config(seed=seed, steps=a.steps, engine="vllm", max_completion_length=a.max_completion_length,
                   eval_every=0, save_every=0, sync_check_every=0, output_dir=out, overwrite=True, **ARMS[arm])
    h = T.train(cfg)
    res, hist = h, h["history"]
    wall = sum(m["time/step"] for m in hist)
    n = len(hist) * cfg.batch_size
    row = {"start": res["first_eval"], "end": res["final_eval"], "responses": n, "loop_wall": wall,
           "responses_per_s": n / wall, "s_per_batch": wall / len(hist),
           "generate_s_per_batch": statistics.mean(m["time/generate"] for m in hist),
           "len_trained": statistics.mean(m["response_length"] for m in hist),
           "truncated_trained": statistics.mean(m["truncation_rate"] for m in hist)}
    if cfg.collect == "continuous":
        last = hist[-1]
        row.update({"len_landed": last["collect/len_landed"], "reward_landed": last["collect/reward_landed"],
                    "reward_trained": statistics.mean(m["reward"] for m in hist),
                    "staleness_mean": statistics.mean(m["collect/staleness_mean"] for m in hist),
                    "dropped": last["collect/dropped_stale"], "launched": last["collect/launched"]})
    else:
        row.update({"len_landed": row["len_trained"], "reward_trained": statistics.mean(m["reward"] for m in hist)})
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-completion-length", type=int, default=96)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    p.add_argument("--keep", action="store_true", help="keep the rows of runs.jsonl for arms not run now")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "async"))
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        emit(one(a.arm, a.seed, a))
        return
    os.makedirs(a.out, exist_ok=True)
    rows, log = [], os.path.join(a.out, "runs.jsonl")
    if a.keep and os.path.exists(log):
        with open(log) as f:
            rows = [r for r in map(json.loads, f) if r["arm"] not in a.arms.split(",")]
    for seed in range(a.seeds):
        for arm in filter(None, a.arms.split(",")):      # --keep --arms "": only re-print the kept rows
            rows.append({"arm": arm, "seed": seed, **run_child(__file__, "--arm", arm, "--seed", seed, "--steps", a.steps,
                                                                "--max-completion-length", a.max_completion_length)})
            print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))
    with open(log, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    lines = [f"`python bench/async_speedup.py {' '.join(sys.argv[1:])}`: embedded task, vLLM on the CPU, "
             f"{a.max_completion_length}-token budget, {a.steps} steps x 16 trained responses per arm\n",
             "| arm | seed | trained responses/s | wall per batch (generate) | generation ms per trained token | "
             "mean length trained vs landed | reward trained vs landed | staleness (dropped) | held-out avg@4 | greedy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['responses_per_s']:.2f} | {r['s_per_batch']:.1f} s "
            f"({r['generate_s_per_batch']:.1f} s) | {1e3 * r['generate_s_per_batch'] / (16 * r['len_trained']):.1f} | "
            f"{r['len_trained']:.1f} vs {r['len_landed']:.1f} | "
            f"{r['reward_trained']:.2f} vs {r.get('reward_landed', r['reward_trained']):.2f} | "
            f"{r.get('staleness_mean', 0):.2f} ({r.get('dropped', 0)}) | "
            f"{r['start']['eval/avg@4']:.3f} → {r['end']['eval/avg@4']:.3f} | "
            f"{r['start']['eval/greedy']:.3f} → {r['end']['eval/greedy']:.3f} |")

    def rate(arm):
        xs = [r["responses_per_s"] for r in rows if r["arm"] == arm]
        return statistics.median(xs) if xs else float("nan")
    speed = rate("SPO continuous F=1.5") / rate("GRPO lock-step")
    lines += ["", f"speedup {speed:.2f}  (SPO continuous F=1.5 over GRPO lock-step, trained responses/s, "
                  f"median over seeds; F=1.75: {rate('SPO continuous F=1.75') / rate('GRPO lock-step'):.2f}; "
                  f"SPO lock-step: {rate('SPO lock-step') / rate('GRPO lock-step'):.2f})"]

    def per_token(arm):
        xs = [r["generate_s_per_batch"] / (16 * r["len_trained"]) for r in rows if r["arm"] == arm]
        return statistics.median(xs) if xs else float("nan")
    lines.append(f"generation seconds per trained token, lock-step over continuous F=1.5: SPO "
                 f"{per_token('SPO lock-step') / per_token('SPO continuous F=1.5'):.2f}x, GRPO "
                 f"{per_token('GRPO lock-step') / per_token('GRPO first-groups F=1.5'):.2f}x (the barrier's cost alone)")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "async.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
