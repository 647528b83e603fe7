"""Segment Policy Optimization beside single-stream SPO and GRPO, at equal generated tokens.

    python bench/segment_compare.py                  # one seed, 3 arms, ~20 min on 2 cores
    python bench/segment_compare.py --seeds 2 --token-budget 6000

Every arm trains the embedded model on the embedded task with a longer response budget (32 tokens) until
it has generated --token-budget tokens (train.py --token-budget: responses *and* Segment-PO's Monte Carlo
continuations count; SPO's offline init and the evaluations do not, reported). Same model, LoRA, learning
rate, loss, 16 responses per step. Prints held-out avg@4 and greedy accuracy, steps taken, tokens and wall
time per arm; writes bench/results/segment/{runs.jsonl, segment.md}. Each run is its own process.
"""
import argparse
import json
import os
import statistics
import sys

from child import emit, run_child
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = {
    "single-stream SPO": dict(algo="spo"),
    "GRPO 4x4": dict(algo="grpo", group_size=4),
    "Segment-PO chain int5": dict(algo="segment"),
}


def one(arm: str, seed: int, a) -> dict:
    import train as T
    out = f"/tmp/spo-segment/{arm.split()[0]}-s{seed}"
    cfg = T.Config(seed=seed, steps=1000, token_budget=a.token_budget, max_completion_length=a.max_completion_length,
                   eval_every=0, save_every=0, output_dir=out, overwrite=True, **ARMS[arm])
    t0 = time.time()
    res = T.train(cfg)
    h = res["history"]
    return {"start": res["first_eval"], "end": res["final_eval"], "steps": len(h), "wall": time.time() - t0,
            "tokens": sum(m["tokens/generated"] for m in h), "s_per_step": statistics.mean(m["time/step"] for m in h),
            "responses": len(h) * cfg.batch_size}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--token-budget", type=int, default=5000)
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "segment"))
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        emit(one(a.arm, a.seed, a))
        return
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for seed in range(a.seeds):
        for arm in ARMS:
            rows.append({"arm": arm, "seed": seed, **run_child(__file__, "--arm", arm, "--seed", seed, "--token-budget",
                                                                a.token_budget, "--max-completion-length",
                                                                a.max_completion_length)})
            print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(a.out, "runs.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    lines = [f"`python bench/segment_compare.py {' '.join(sys.argv[1:])}`: embedded task, "
             f"{a.max_completion_length} new tokens, {a.token_budget} generated tokens per arm\n",
             "| arm | seed | steps (responses) | tokens generated | held-out avg@4 | greedy | wall (s/step) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['steps']} ({r['responses']}) | {r['tokens']} | "
                     f"{r['start']['eval/avg@4']:.3f} → {r['end']['eval/avg@4']:.3f} | "
                     f"{r['start']['eval/greedy']:.3f} → {r['end']['eval/greedy']:.3f} | "
                     f"{r['wall']:.0f} s ({r['s_per_step']:.1f}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "segment.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
