"""Where a step of TRL's trainer goes: TRL GRPO 4x4 against SPO in TRL (extensions/trl_spo.py), phase by phase.

    python bench/trl_step_cost.py [--steps 40] [--seed 0]

Both arms run bench/vs_trl.py's setting (the same model, LoRA, task, budgets and seed), each in a fresh process,
with TRL's methods timed from outside (nothing in TRL or the module changes). A batch is one generation of 16
responses and its 2 optimizer steps (one step of this project's trainer); figures are medians over the batches
after the first (the first also runs SPO's offline init). Run it alone: two torch processes slow each other ~10x.
"""
import argparse
import collections
import functools
import os
import statistics
import sys
import time

from child import ROOT, emit, run_child

PHASES = ["generate", "pi_old + rewards", "drift pass", "update", "other", "batch"]


def child(arm: str, seed: int, steps: int) -> None:
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import vs_trl
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from extensions.trl_spo import SPOTrainer
    total = collections.defaultdict(float)                 # seconds inside each timed method, so far

    def timed(cls, name, key):
        f = getattr(cls, name)

        @functools.wraps(f)
        def g(self, *x, **k):
            t = time.perf_counter()
            try:
                return f(self, *x, **k)
            finally:
                total[key] += time.perf_counter() - t
        setattr(cls, name, g)
    timed(GRPOTrainer, "_generate", "generate")
    timed(GRPOTrainer, "_generate_and_score_completions", "score")    # TRL's own: generation, pi_old, rewards
    timed(SPOTrainer, "spo_drift", "drift pass")
    timed(GRPOTrainer, "_prepare_inputs", "prepare")
    timed(GRPOTrainer, "training_step", "step")
    batches, mark = [], [time.perf_counter(), dict(total)]

    class Batches(TrainerCallback):                        # per batch: the change of each total
        def on_step_end(self, args, state, control, **_):
            if state.global_step % args.steps_per_generation == 0:
                now, prev = time.perf_counter(), mark[1]
                d = {k: total[k] - prev.get(k, 0.0) for k in total}
                batches.append({"generate": d["generate"], "pi_old + rewards": d["score"] - d["generate"],
                                "drift pass": d.get("drift pass", 0.0), "update": d["step"] - d["prepare"],
                                "batch": now - mark[0]})
                batches[-1]["other"] = batches[-1]["batch"] - sum(v for k, v in batches[-1].items() if k != "batch")
                mark[:] = [now, dict(total)]
    init = GRPOTrainer.__init__

    def with_timer(self, *x, callbacks=None, **k):
        init(self, *x, callbacks=[*(callbacks or []), Batches()], **k)
    GRPOTrainer.__init__ = with_timer
    import train as T
    c = T.Config()                                         # vs_trl's evaluation protocol, on 4 problems (untimed)
    a = argparse.Namespace(steps=steps, n_eval=4, eval_every=0, eval_temperature=c.eval_temperature,
                           eval_top_p=c.eval_top_p, set=[])
    vs_trl.trl(seed, a, "/tmp/spo-trl-step-cost", spo=arm == vs_trl.TRL_SPO)
    emit({k: statistics.median(b[k] for b in batches[1:]) for k in PHASES})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="batches (this project's steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/vs_trl_paper_eval/trl_step_cost.md")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        return child(a.arm, a.seed, a.steps)
    arms = ["TRL GRPO 4x4", "SPO in TRL"]
    rows = {arm: run_child(__file__, "--arm", arm, "--seed", a.seed, "--steps", a.steps) for arm in arms}
    text = (f"`python bench/trl_step_cost.py {' '.join(sys.argv[1:])}`\n\nseconds a batch (16 responses, 2 optimizer "
            f"steps), median of batches 2..{a.steps}, seed {a.seed}, CPU ({os.cpu_count()} cores)\n\n"
            "| arm | " + " | ".join(PHASES) + " |\n|---|" + "---|" * len(PHASES) + "\n"
            + "".join(f"| {arm} | " + " | ".join(f"{rows[arm][k]:.2f}" for k in PHASES) + " |\n" for arm in arms)
            + f"\nSPO in TRL - TRL GRPO: {rows[arms[1]]['batch'] - rows[arms[0]]['batch']:+.2f} s a batch; SPO's drift "
            f"pass alone {rows[arms[1]]['drift pass']:.2f} s (medians: the phases need not add up to the batch)\n")
    print(text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
