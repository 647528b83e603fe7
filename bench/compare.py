"""SPO vs GRPO side by side on the embedded task, same responses per step, plus the paper's ablations.

    python bench/compare.py            # 3 seeds x (SPO 16x1, GRPO 4x4, GRPO 2x8) + 3 ablations, ~66 min on 2 cores
    python bench/compare.py --quick    # SPO vs GRPO 4x4, one seed, ~10 min
    python bench/compare.py --arms "SPO fast tracker (rho 0.5)"   # add arms to the recorded runs
    # from a policy that already answers in format (the adapter of a default `python train.py`), ~45 min:
    python bench/compare.py --init-adapter runs/spo/adapter --eval-every 2 --arms "SPO 16x1" "GRPO 4x4" --out bench/results/warm_start

Every arm samples the same number of responses per step (16) and in total, with the same model, learning
rate, loss and seeds; only the prompt sampling and the baseline differ (train.py --algo). Reports held-out
avg@k against responses sampled in training, the wasted share (GRPO: samples in groups whose rewards all
agree; SPO: |A_tilde| < 0.02), the unnormalised advantage variance beside the same run's no-baseline
variance (r itself), and wall time. SPO's offline-init samples are reported separately: the paper does not
count them, a strict budget would. The finals are also paired by seed (a seed fixes the task split and
sampling seeds in every arm) to say whether the budget separates SPO from GRPO at all. Writes compare.md
and compare.png to --out.
"""
import argparse
import gc
import json
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = {  # name -> train.Config overrides; batch 16 responses everywhere
    "SPO 16x1": dict(algo="spo"),
    "GRPO 4x4": dict(algo="grpo", group_size=4),
    "GRPO 2x8": dict(algo="grpo", group_size=8),
    "SPO w/o offline init": dict(algo="spo", offline_samples=0),
    "SPO w/o prioritised sampling": dict(algo="spo", uniform_sampling=True),
    "SPO w/o baseline": dict(algo="spo", no_baseline=True),
    # diagnosis, not a paper arm: a tracker that forgets fast (window 2 instead of 8-25, N0 = 2) tests
    # whether SPO's gap on this task is the tracker lagging a policy that moves 40 pts in 10 steps
    "SPO fast tracker (rho 0.5)": dict(algo="spo", rho_min=0.5, rho_max=0.5),
}
MAIN = ["SPO 16x1", "GRPO 4x4", "GRPO 2x8"]
DIAGNOSIS = ["SPO fast tracker (rho 0.5)"]  # run with --arms, not part of the default plan


def run(name: str, seed: int, a, out: str) -> dict:
    import train as T
    slug = re.sub(r"[^\w.-]+", "_", name)                                  # "SPO w/o baseline" -> SPO_w_o_baseline
    cfg = T.Config(seed=seed, steps=a.steps, eval_every=a.eval_every or a.steps // 2, eval_k=a.eval_k, n_eval=a.n_eval,
                   save_every=0, output_dir=os.path.join(out, "runs", f"{slug}-s{seed}"),
                   init_adapter=a.init_adapter, overwrite=True, **ARMS[name])
    t = time.time()
    res = T.train(cfg)
    wall = time.time() - t
    h = res["history"]
    key = f"eval/avg@{a.eval_k}"
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        evals = [(m["step"] * cfg.batch_size, m[key]) for m in map(json.loads, f) if key in m]
    waste = [m["grpo/degenerate_share"] if cfg.algo == "grpo" else m["adv/near_zero_0.02"] for m in h]
    offline = 0 if cfg.algo == "grpo" or cfg.offline_samples == 0 else cfg.offline_samples * cfg.n_train
    gc.collect()
    return {"arm": name, "seed": seed, "evals": evals, "final": evals[-1][1], "start": evals[0][1],
            "waste": statistics.mean(waste), "raw_var": statistics.mean(m["adv/raw_var"] for m in h),
            "nobase_var": statistics.mean(m["adv/noBaseline_var"] for m in h), "wall": wall,
            "brier": statistics.mean(m["tracker/brier"] for m in h) if cfg.algo == "spo" else None,
            "offline_samples": offline}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="SPO vs GRPO 4x4, one seed, fewer steps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="with --arms: run seeds first-seed .. first-seed+seeds-1")
    p.add_argument("--steps", type=int, default=10)  # ~5.5 min a run on 2 cores: 12 runs ~ 66 min
    p.add_argument("--eval-k", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps (default: steps // 2)")
    p.add_argument("--n-eval", type=int, default=32)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--report-only", action="store_true", help="re-render compare.md/png from compare_runs.jsonl")
    p.add_argument("--init-adapter", help="start every arm from this LoRA adapter (e.g. runs/spo/adapter of a "
                   "default `python train.py`): a policy that already answers in format")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), metavar="ARM",
                   help="run only these arms (all --seeds each) and append them to compare_runs.jsonl")
    a = p.parse_args()
    plan = [(n, s) for n in MAIN for s in range(a.seeds)] + [(n, 0) for n in ARMS if n not in MAIN + DIAGNOSIS]
    if a.arms:
        plan = [(n, s) for n in a.arms for s in range(a.first_seed, a.first_seed + a.seeds)]
    if a.quick:
        a.steps = 8
        plan = [("SPO 16x1", 0), ("GRPO 4x4", 0)]
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "compare_runs.jsonl")
    results = []
    if (a.report_only or a.arms) and os.path.exists(log):                  # re-render / extend finished runs
        with open(log) as f:
            results = [r for r in map(json.loads, f) if not (a.arms and (r["arm"], r["seed"]) in plan)]
    with open(log, "w") as f:                                               # keep what is not being re-run
        f.writelines(json.dumps(r) + "\n" for r in results)
    for i, (name, seed) in enumerate([] if a.report_only else plan):
        print(f"=== [{i + 1}/{len(plan)}] {name}, seed {seed}", flush=True)
        results.append(run(name, seed, a, a.out))
        with open(log, "a") as f:                                           # partial results survive a stop
            f.write(json.dumps(results[-1]) + "\n")

    arms = list(dict.fromkeys(r["arm"] for r in results))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    lines = [f"# SPO vs GRPO on the embedded task ({a.steps} steps x 16 responses, held-out avg@{a.eval_k}, "
             f"{a.n_eval} problems{', warm start from ' + a.init_adapter if a.init_adapter else ''})", "",
             "| arm | seeds | held-out start -> end (median) | end per seed | wasted share "
             "| adv. variance / no-baseline variance | tracker Brier | wall | offline-init samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        briers = [r["brier"] for r in rs if r.get("brier") is not None]
        ends = " ".join(f"{r['final']:.2f}" for r in rs)
        lines.append(f"| {arm} | {len(rs)} | {med([r['start'] for r in rs]):.3f} -> **{med([r['final'] for r in rs]):.3f}** "
                     f"| {ends} "
                     f"| {med([r['waste'] for r in rs]):.2f} | {med([r['raw_var'] for r in rs]):.3f} / "
                     f"{med([r['nobase_var'] for r in rs]):.3f} | {f'{med(briers):.3f}' if briers else '-'} "
                     f"| {med([r['wall'] for r in rs]):.0f} s | {rs[0]['offline_samples']} |")
    spo = [r for r in results if r["arm"] == "SPO 16x1"]
    grpo = [r for r in results if r["arm"] == "GRPO 4x4"]
    if spo and grpo:
        paired = {r["seed"]: r["final"] for r in grpo}          # a seed fixes the task split and sampling seeds
        first = lambda r: next((n for n, v in r["evals"] if v >= paired[r["seed"]]), None)  # noqa: E731
        reach = [(r["seed"], first(r), first(g)) for r in spo for g in grpo if g["seed"] == r["seed"]]
        # the same first-crossing rule for both arms: a noisy curve crosses early by chance in either
        lines += ["", f"- responses to first reach the same seed's GRPO 4x4 final accuracy, SPO vs GRPO 4x4 "
                  f"(evals every {(a.eval_every or a.steps // 2) * 16}): "
                  + ", ".join(f"seed {s}: {'never' if x is None else x} vs {'never' if y is None else y}"
                              for s, x, y in reach)
                  + (f"; mean {statistics.mean(x for _, x, _ in reach):.0f} vs {statistics.mean(y for _, _, y in reach):.0f}"
                     if all(x is not None for _, x, _ in reach) else "") + ".",
                  f"- wasted share SPO / GRPO 4x4 = {med([r['waste'] for r in spo]):.2f} / "
                  f"{med([r['waste'] for r in grpo]):.2f} (goal: SPO <= 1/3 of GRPO)."]
        diffs = [r["final"] - paired[r["seed"]] for r in spo if r["seed"] in paired]
        if len(diffs) > 1:
            mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
            lines.append(f"- final SPO - GRPO 4x4, paired by seed: {mean:+.3f} +/- {se:.3f} (s.e., {len(diffs)} seeds); "
                         + ("within 2 s.e. of zero: this budget does not separate the two arms."
                            if abs(mean) < 2 * se else "more than 2 s.e. from zero."))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(text)
    print(text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        xs = [n for n, _ in rs[0]["evals"]]
        ax.plot(xs, [med([r["evals"][j][1] for r in rs]) for j in range(len(xs))], "o-", label=arm)
    ax.set_xlabel("responses sampled in training")
    ax.set_ylabel(f"held-out avg@{a.eval_k} (median over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "compare.png"), dpi=90)
    print(f"wrote {a.out}/compare.md and compare.png")


if __name__ == "__main__":
    main()
