"""Group-based vs group-free batch assembly under long-tailed rollout latency (paper §5.4, Figs. 4-5).

    python bench/agentic_sim.py [--trials 20000] [--seed 0] [--out bench/results]

1. The paper's own draws: 6 groups of 8 run in parallel, the batch of 24 samples is ready when the 3
   fastest groups have finished (each group waits for its slowest member); group-free, 48 samples are
   launched and the first 24 to finish make the batch.
2. Generalised by Monte Carlo: latency distributions (log-normal fitted to the paper's Fig. 4b draws,
   Pareto tails, and a light-tailed control), group sizes, over-sampling factors. Both schemes launch
   the same number of rollouts (oversample x batch) and need the same batch; the speedup is the ratio
   of mean wall times until the batch is complete.
Writes agentic_speedup.md and agentic_speedup.png to --out.
"""
import argparse
import os

import numpy as np

# Paper §5.4: Fig. 5 group completion times (s) of 6 groups of 8, and Fig. 4b's high-variance group.
PAPER_GROUP_TIMES = [130, 133, 486, 495, 519, 553]
PAPER_GROUP_FREE_READY = 112          # time the 24th of 48 independent samples finished (Fig. 5)
FIG4B_DRAWS = [74, 87, 90, 114, 117, 409, 444, 508]


def group_based(lat: np.ndarray, group_size: int, groups_needed: int) -> np.ndarray:
    """lat: [trials, n_groups * G] -> wall time until `groups_needed` whole groups have finished."""
    g = lat.reshape(lat.shape[0], -1, group_size).max(axis=2)     # [trials, n_groups] group finish times
    return np.sort(g, axis=1)[:, groups_needed - 1]


def group_free(lat: np.ndarray, samples_needed: int) -> np.ndarray:
    """lat: [trials, n] -> wall time until the first `samples_needed` samples have finished."""
    return np.partition(lat, samples_needed - 1, axis=1)[:, samples_needed - 1]


def distributions(rng):
    logs = np.log(FIG4B_DRAWS)
    mu, sigma = logs.mean(), logs.std(ddof=1)
    return {
        f"log-normal fit to Fig. 4b (median {np.exp(mu):.0f} s, sigma {sigma:.2f})":
            lambda n: rng.lognormal(mu, sigma, n),
        "Pareto alpha=1.5, min 60 s": lambda n: 60 * (1 + rng.pareto(1.5, n)),
        "Pareto alpha=3, min 60 s": lambda n: 60 * (1 + rng.pareto(3.0, n)),
        "light tail: uniform 60-130 s (Fig. 4a)": lambda n: rng.uniform(60, 130, n),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=24, help="samples the trainer needs per step")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    lines = ["# Agentic throughput: group-based vs group-free (paper §5.4)", ""]

    # ---- 1. the paper's own draws
    ready_group = sorted(PAPER_GROUP_TIMES)[a.batch // 8 - 1]
    lines += ["## The paper's draws (Fig. 5)", "",
              f"- group-based: group finish times {PAPER_GROUP_TIMES} s; 24 samples = the 3 fastest groups "
              f"-> ready at **{ready_group} s**",
              f"- group-free: 48 independent samples, the first 24 -> ready at **{PAPER_GROUP_FREE_READY} s**",
              f"- speedup {ready_group} / {PAPER_GROUP_FREE_READY} = **{ready_group / PAPER_GROUP_FREE_READY:.2f}x** "
              "(the paper rounds to 4.35x)", ""]

    # ---- 2. Monte Carlo over distributions, group sizes, over-sampling factors
    lines += [f"## Monte Carlo ({a.trials:,} trials each, batch {a.batch} samples)", "",
              "| latency distribution | G | oversample | launched | group-based s | group-free s | speedup |",
              "|---|---|---|---|---|---|---|"]
    curves = {}
    for name, draw in distributions(rng).items():
        for g in (4, 8, 16):
            if a.batch % g:
                continue
            for f in (1.0, 1.5, 2.0, 3.0):
                n_groups = int(round(f * a.batch / g))
                n = n_groups * g
                lat = draw(a.trials * n).reshape(a.trials, n)
                gb = group_based(lat, g, a.batch // g).mean()
                gf = group_free(lat, a.batch).mean()
                lines.append(f"| {name} | {g} | {f:g}x | {n} | {gb:.0f} | {gf:.0f} | {gb / gf:.2f}x |")
                if g == 8:
                    curves.setdefault(name, []).append((f, gb / gf))
    lines += ["", "With no over-sampling (1x) both schemes wait for every launched rollout, so they tie. Once "
              "extra rollouts are launched, group-free assembly wins by 2-3.5x under the heavy tails (the "
              "log-normal fitted to the paper's draws, Pareto alpha 1.5) at G = 8, and by 1.1-1.4x under a "
              "light tail: the straggler cost that groups pay is a property of the tail."]
    with open(os.path.join(a.out, "agentic_speedup.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        ax.plot(*zip(*pts), "o-", label=name)
    ax.axhline(1, color="gray", lw=0.5)
    ax.set_xlabel("over-sampling factor (rollouts launched / batch)")
    ax.set_ylabel("speedup of group-free (G = 8)")
    ax.set_title(f"time to a batch of {a.batch} samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "agentic_speedup.png"), dpi=90)
    print(f"\nwrote {a.out}/agentic_speedup.md and .png")


if __name__ == "__main__":
    main()
