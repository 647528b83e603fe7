"""SPO vs GRPO on a simulated policy with exact accuracy: where the tracker helps, and where it lags.

    python bench/policy_sim.py                 # all regimes, 10 seeds each
    python bench/policy_sim.py --seeds 3       # quicker

The embedded-task comparison (bench/compare.py) is too small and too noisy to settle the paper's claims, and
its policy moves ~40 pts in 10 steps while each prompt comes back every ~4 steps. Here the *algorithm* runs at
the paper's scale in seconds, with the real ValueTracker, PrioritizedSampler, spo_advantages, grpo_advantages
and policy_loss; only the LLM is replaced by a policy whose accuracy can be computed exactly:

    p(correct | x) = sigmoid(c + w . f_x - d_x + b_x)        (one Bernoulli "response" per sample)

c is a shared skill, w shared feature weights (what transfers to held-out prompts), b_x a per-prompt term
(memorisation), d_x the prompt's difficulty, part of it predictable from its features f_x. Rewards are
Bernoulli(p); the update is PPO-clip (Clip-Higher, token-mean, mini-batches) with SGD; the drift D that sets
the tracker's forgetting is |log pi_now - log pi_then| of the prompt's previous response, as in train.py.
Held-out accuracy = mean p over held-out prompts (c and w only), so there is no evaluation noise.

Three regimes (REGIMES below), the same responses per step for every arm:
- paper:             4096 prompts of widely spread difficulty, SPO 256 x 1 vs GRPO 32 x 8 and 64 x 4, 150 steps,
                     n0 = 8, a slowly moving policy (the setting the paper's claims are about).
- paper, fast drift: the same, with 25x the step size: the policy outruns the tracker's window.
- cpu-toy:           the embedded task's shape: 64 near-equally hard prompts, SPO 16 x 1 vs GRPO 4 x 4 and 2 x 8,
                     10 steps, n0 = 4, a fast-moving policy.
Writes policy_sim.md and policy_sim.png to --out.
"""
import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampler import PrioritizedSampler, priority_weights  # noqa: E402
from spo import degenerate_share, grpo_advantages, policy_loss, spo_advantages  # noqa: E402
from tracker import ValueTracker  # noqa: E402

REGIMES = {
    # paper scale, a slowly moving policy: held-out accuracy moves ~5-7 pts in 150 steps and a prompt comes
    # back every ~16 steps, so the tracker's 8-25-visit window sees a nearly fixed v(x)
    "paper": dict(prompts=4096, heldout=1024, batch=256, steps=150, n0=8, lr=0.002, minibatches=8,
                  mean_difficulty=0.0, spread=4.0, groups=(8, 4)),
    # same pool, 25x the step size: the policy moves ~40 pts in 50 steps, faster than the tracker forgets
    "paper, fast drift": dict(prompts=4096, heldout=1024, batch=256, steps=50, n0=8, lr=0.05, minibatches=8,
                              mean_difficulty=0.0, spread=4.0, groups=(8, 4)),
    # the embedded task's shape: 64 prompts of nearly equal difficulty (its offline success counts fit one
    # binomial with p ~ 0.15), 16 responses a step, a policy moving ~40 pts in 10 steps
    "cpu-toy": dict(prompts=64, heldout=256, batch=16, steps=10, n0=4, lr=0.5, minibatches=2,
                    mean_difficulty=1.8, spread=0.5, groups=(4, 8)),
}
FEATURES = 8


class Policy:
    """Logits z = c + F @ w - d + b of one prompt set; `accuracy` is exact."""

    def __init__(self, regime: dict, seed: int):
        g = torch.Generator().manual_seed(seed)
        n = regime["prompts"] + regime["heldout"]
        self.f = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)                   # [N, k]
        u = torch.randn(FEATURES, generator=g, dtype=torch.float64)
        known = self.f @ (u / u.norm())                                                       # learnable via w
        own = torch.randn(n, generator=g, dtype=torch.float64)                                # only via b_x
        self.d = regime["mean_difficulty"] + regime["spread"] * (0.6 * known + 0.8 * own)    # [N]
        self.n_train = regime["prompts"]
        self.c = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        self.w = torch.zeros(FEATURES, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(self.n_train, dtype=torch.float64, requires_grad=True)

    def logits(self, idx) -> torch.Tensor:                                                    # [B]
        idx = torch.as_tensor(idx)
        return self.c + self.f[idx] @ self.w - self.d[idx] + self.b[idx]

    def logp(self, idx, y) -> torch.Tensor:                                                   # [B]
        z = self.logits(idx)
        return torch.where(torch.as_tensor(y), torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z))

    @torch.no_grad()
    def accuracy(self, split: str) -> float:
        if split == "train":
            return torch.sigmoid(self.logits(torch.arange(self.n_train))).mean().item()
        ho = torch.arange(self.n_train, len(self.d))
        return torch.sigmoid(self.c + self.f[ho] @ self.w - self.d[ho]).mean().item()


def run(regime: dict, arm: str, seed: int) -> dict:
    """One training run; arm is 'SPO', 'SPO w/o ...' or 'GRPO BxG'. Returns curves and per-step stats."""
    pol = Policy(regime, seed)
    rng = np.random.default_rng(1000 + seed)
    sampler = PrioritizedSampler(seed)
    opt = torch.optim.SGD([pol.c, pol.w, pol.b], lr=regime["lr"])
    P, B = regime["prompts"], regime["batch"]
    keys = list(range(P))
    tracker, last_y, last_logp = ValueTracker(), {}, {}
    if arm.startswith("SPO") and "offline init" not in arm:                    # Alg. 2: n0 samples of pi_0
        with torch.no_grad():
            p0 = torch.sigmoid(pol.logits(torch.arange(P))).numpy()
        tracker.init_from_offline(keys, (rng.random((P, regime["n0"])) < p0[:, None]).astype(float))
    curve, waste, raw_var, nobase_var, brier = [(0, pol.accuracy("heldout"))], [], [], [], []
    for step in range(1, regime["steps"] + 1):
        # ---- sample prompts -> responses -> rewards -> advantages
        if arm.startswith("SPO"):
            v_all = tracker.value(keys)                                                       # [P] v_hat_{-1}
            idx = sampler.shuffled(P, B) if "w/o prioritised" in arm else \
                sampler.sample(priority_weights(v_all), B)                                    # Eq. 11
            v_prev = np.zeros(B) if "w/o baseline" in arm else v_all[idx]
        else:
            G = int(arm.split("x")[1])
            idx = np.repeat(sampler.shuffled(P, B // G), G)                                   # [B] groups contiguous
        with torch.no_grad():
            y = torch.rand(B, generator=torch.Generator().manual_seed(seed * 100_003 + step), dtype=torch.float64) \
                < torch.sigmoid(pol.logits(idx))                                              # [B] one response each
        r = y.double()
        if arm.startswith("SPO"):
            adv = spo_advantages(r, v_prev)                                                   # Eq. 8-9
            waste.append(float((adv.abs() < 0.02).float().mean()))
            raw_var.append(float(np.var(r.numpy() - v_prev)))
            brier.append(float(np.mean((v_all[idx] - r.numpy()) ** 2)))
        else:
            adv = grpo_advantages(r, G)
            waste.append(degenerate_share(r, G))
            raw_var.append(float(np.var(r.numpy() - r.view(-1, G).mean(1).repeat_interleave(G).numpy())))
        nobase_var.append(float(np.var(r.numpy())))
        # ---- PPO-clip update (Eq. 10), one epoch of mini-batches
        with torch.no_grad():
            old = pol.logp(idx, y)
        for mb in np.array_split(rng.permutation(B), regime["minibatches"]):
            ones = torch.ones(len(mb), 1, dtype=torch.float64)
            loss, _ = policy_loss(pol.logp(idx[mb], y[mb])[:, None], old[mb, None], adv[mb, None].double(), ones)
            opt.zero_grad()
            loss.backward()
            opt.step()
        # ---- tracker update (Eq. 5) with the drift of each prompt's previous response
        if arm.startswith("SPO"):
            with torch.no_grad():
                now = pol.logp(idx, y).numpy()
                drift = np.zeros(B)
                seen = [j for j, i in enumerate(idx) if i in last_y]
                if seen:
                    prev_i = idx[seen]
                    prev_y = torch.tensor([last_y[i] for i in prev_i])
                    drift[seen] = np.abs(pol.logp(prev_i, prev_y).numpy() - np.array([last_logp[i] for i in prev_i]))
            for j, i in enumerate(idx):
                last_y[i], last_logp[i] = bool(y[j]), float(now[j])
            tracker.update([int(i) for i in idx], r.numpy(), drift)
        curve.append((step * B, pol.accuracy("heldout")))
    return {"arm": arm, "seed": seed, "curve": curve, "train_acc": pol.accuracy("train"),
            "waste": statistics.mean(waste), "raw_var": statistics.mean(raw_var),
            "nobase_var": statistics.mean(nobase_var), "brier": statistics.mean(brier) if brier else None}


def arms_for(regime: dict) -> list[str]:
    B = regime["batch"]
    return [f"SPO {B}x1"] + [f"GRPO {B // G}x{G}" for G in regime["groups"]] + \
        ["SPO w/o offline init", "SPO w/o prioritised sampling", "SPO w/o baseline"]


def first_reach(curve, target):
    return next((n for n, acc in curve if acc >= target), None)


def report(name: str, regime: dict, results: list[dict]) -> list[str]:
    med = statistics.median
    arms = list(dict.fromkeys(r["arm"] for r in results))
    grpo = arms[1]                                  # arms[0] is SPO, arms[1] the reference GRPO arm
    target = med(r["curve"][-1][1] for r in results if r["arm"] == grpo)
    lines = [f"## {name}: {regime['prompts']} prompts, {regime['batch']} responses/step, {regime['steps']} steps, "
             f"n0 = {regime['n0']}, {len({r['seed'] for r in results})} seeds (medians)", "",
             f"| arm | held-out acc. start -> end | responses to reach {grpo}'s final ({target:.3f}) "
             "| wasted share | var(A) / var(r) | tracker Brier |", "|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        reach = [first_reach(r["curve"], target) for r in rs]
        hit = [x for x in reach if x is not None]
        reach_s = f"{med(hit):.0f} ({len(hit)}/{len(rs)} seeds)" if hit else f"never (0/{len(rs)})"
        brier = f"{med(r['brier'] for r in rs):.3f}" if rs[0]["brier"] is not None else "-"
        lines.append(f"| {arm} | {med(r['curve'][0][1] for r in rs):.3f} -> **{med(r['curve'][-1][1] for r in rs):.3f}**"
                     f" | {reach_s} | {med(r['waste'] for r in rs):.2f} | {med(r['raw_var'] for r in rs):.3f} / "
                     f"{med(r['nobase_var'] for r in rs):.3f} | {brier} |")
    return lines + [""]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    lines = ["# SPO vs GRPO on a simulated policy (exact held-out accuracy; `python bench/policy_sim.py`)", "",
             "var(A) is the unnormalised advantage variance (SPO: r - v_hat; GRPO: r - group mean), var(r) the "
             "same run's no-baseline variance; the tracker Brier is mean (v_hat - r)^2, to compare with var(r), "
             "the Brier of the batch mean.", ""]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(a.regimes), figsize=(6 * len(a.regimes), 4), squeeze=False)
    for ax, name in zip(axes[0], a.regimes):
        regime = REGIMES[name]
        results = [run(regime, arm, s) for arm in arms_for(regime) for s in range(a.seeds)]
        table = report(name, regime, results)
        lines += table
        print("\n".join(table), flush=True)
        for arm in dict.fromkeys(r["arm"] for r in results):
            rs = [r for r in results if r["arm"] == arm]
            xs = [n for n, _ in rs[0]["curve"]]
            ax.plot(xs, [statistics.median(r["curve"][j][1] for r in rs) for j in range(len(xs))], label=arm)
        ax.set_title(name)
        ax.set_xlabel("responses sampled in training")
        ax.set_ylabel("held-out accuracy (exact, median over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "policy_sim.png"), dpi=90)
    with open(os.path.join(a.out, "policy_sim.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {a.out}/policy_sim.md and policy_sim.png")


if __name__ == "__main__":
    main()
