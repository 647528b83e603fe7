"""Segment Policy Optimization (SPO-chain, SPO-tree) beside single-stream SPO and GRPO, at equal generated tokens.

    python bench/segment_compare.py --seeds 3       # 3 seeds x 5 arms, ~100 min on 2 cores
    python bench/segment_compare.py --seeds 1 --token-budget 600 --arms "SPO-tree 2-2"    # smoke run

Every arm trains the embedded model on the embedded task with a longer response budget (32 tokens) until
it has generated --token-budget tokens (train.py --token-budget: responses, Segment-PO's Monte Carlo
continuations and SPO-tree's nodes all count; SPO's offline init and the evaluations do not). Same model, LoRA,
learning rate, loss, 16 responses a step (SPO-tree: 16 full-depth leaves, so 2-2 trees on 4 prompts or 4-4 trees
on 1 prompt; segments of 8 tokens, the last level to the end). Prints, per arm and seed, held-out avg@4 (the
current evaluation protocol) and greedy accuracy at the start and the end, steps taken, tokens and wall time,
SPO-tree's trained segments a step and the share of its segments dropped for a zero advantage; then the medians
over seeds. Writes bench/results/segment/{runs.jsonl, segment.md}. Each run is its own process; run it alone.
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
    "SPO-chain int5": dict(algo="segment"),
    "SPO-tree 2-2": dict(algo="segment", segment_partition="tree", tree_branching="2,2"),
    "SPO-tree 4-4": dict(algo="segment", segment_partition="tree", tree_branching="4,4"),
}
# the setting docs/segment.md's records were measured on: the easy levels, cold, at a fast rate
SETTING = dict(embedded_levels="1,1,1,2,4", sft_steps=0, n_train=32, n_eval=32, offline_samples=4, learning_rate=2e-4,
               temperature=1.0)


def one(arm: str, seed: int, a) -> dict:
    import train as T
    out = f"/tmp/spo-segment/{arm.replace(' ', '_')}-s{seed}"
    cfg = T.Config(seed=seed, steps=1000, token_budget=a.token_budget, max_completion_length=a.max_completion_length,
                   eval_every=0, save_every=0, output_dir=out, overwrite=True, **SETTING, **ARMS[arm])
    t0 = time.time()
    res = T.train(cfg)
    h = res["history"]
    return {"start": res["first_eval"], "end": res["final_eval"], "steps": len(h), "wall": time.time() - t0,
            "tokens": sum(m["tokens/generated"] for m in h), "s_per_step": statistics.mean(m["time/step"] for m in h),
            "responses": len(h) * cfg.batch_size, "eval": [cfg.eval_temperature, cfg.eval_top_p],
            **({"segments_per_step": statistics.mean(m["tree/segments_trained"] for m in h),
                "dropped_share": statistics.mean(m["tree/dropped_share"] for m in h)} if "tree/leaves" in h[0] else {})}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
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
        for arm in a.arms:
            rows.append({"arm": arm, "seed": seed, **run_child(__file__, "--arm", arm, "--seed", seed, "--token-budget",
                                                                a.token_budget, "--max-completion-length",
                                                                a.max_completion_length)})
            print(json.dumps(rows[-1]), flush=True)
            with open(os.path.join(a.out, "runs.jsonl"), "w") as f:       # every finished run, as it lands
                f.writelines(json.dumps(r) + "\n" for r in rows)
    T, top_p = rows[0]["eval"]
    lines = [f"`python bench/segment_compare.py {' '.join(sys.argv[1:])}`: embedded task, "
             f"{a.max_completion_length} new tokens, {a.token_budget} generated tokens per arm, held-out avg@4 at "
             f"T = {T:g}, top-p {top_p:g}\n",
             "| arm | seed | steps (responses) | tokens generated | held-out avg@4 | greedy | wall (s/step) | "
             "tree: segments trained a step, dropped |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tree = f"{r['segments_per_step']:.1f}, {r['dropped_share']:.0%}" if r["arm"].startswith("SPO-tree") else ""
        lines.append(f"| {r['arm']} | {r['seed']} | {r['steps']} ({r['responses']}) | {r['tokens']} | "
                     f"{r['start']['eval/avg@4']:.3f} → {r['end']['eval/avg@4']:.3f} | "
                     f"{r['start']['eval/greedy']:.3f} → {r['end']['eval/greedy']:.3f} | "
                     f"{r['wall']:.0f} s ({r['s_per_step']:.1f}) | {tree} |")
    lines += ["", f"medians over {a.seeds} seed(s):", "",
              "| arm | steps | end avg@4 | end greedy | end avg@4 − single-stream SPO's, per seed |", "|---|---|---|---|---|"]
    spo = {r["seed"]: r for r in rows if r["arm"] == "single-stream SPO"}
    for arm in a.arms:
        mine = [r for r in rows if r["arm"] == arm]
        med = lambda k: statistics.median(r["end"][k] for r in mine)         # noqa: E731
        diff = " ".join(f"{r['end']['eval/avg@4'] - spo[r['seed']]['end']['eval/avg@4']:+.3f}"
                        for r in mine if r["seed"] in spo)
        lines.append(f"| {arm} | {statistics.median(r['steps'] for r in mine):g} | {med('eval/avg@4'):.3f} | "
                     f"{med('eval/greedy'):.3f} | {diff if arm != 'single-stream SPO' else ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "segment.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
