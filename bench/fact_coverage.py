"""What a trained adapter knows on the embedded task: accuracy on problems whose arithmetic fact is in the
training pool (in another wording: a word problem, swapped operands) against problems with a new fact.

    python train.py                                   # writes runs/spo/adapter (seed 0)
    python bench/fact_coverage.py runs/spo/adapter    # ~4 min on 2 cores
    python bench/fact_coverage.py none                # the untrained policy, for comparison

The problems are --n-probe more draws from the same generator as the run's pool and held-out set
(data.embedded_tasks with the run's seed and --n-train), so none is a training prompt and the first
--n-eval of them are the run's held-out set. A problem's fact is its operation and operands (sums
unordered): "What is 3 + 9?", "What is 9 + 3?" and "Tom has 3 coins and gets 9 more..." share one.
Prints held-out avg@k (at train.py's --eval-temperature / --eval-top-p unless given; docs/results.md's table
was measured at T = 1, top-p 1) and greedy accuracy (T = 0) per level and in all, for facts in the pool
and new facts, each scored by rewards.evaluate. Run it alone: two torch processes slow each other ~10x.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LEVELS = {1: "one-digit sums", 2: "one-digit differences", 3: "two-digit + one-digit", 4: "word problems (sums)",
          5: "three addends", 6: "two-digit sums", 7: "two-digit differences", 8: "one-digit products",
          9: "teen x one-digit"}


def fact(task) -> tuple:
    """(op, operands) of an embedded problem: its numbers, sorted but for differences (word problems are sums)."""
    xs = tuple(int(x) for x in re.findall(r"\d+", task.prompt))
    op = "-" if " - " in task.prompt else "*" if " * " in task.prompt else "+"
    return (op, xs) if op == "-" else (op, tuple(sorted(xs)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="a saved adapter folder (runs/spo/adapter), or 'none' for the initial policy")
    p.add_argument("--seed", type=int, default=0, help="the run's --seed (it draws the pool)")
    p.add_argument("--n-train", type=int, default=None, help="the run's --n-train (default: train.py's)")
    p.add_argument("--n-probe", type=int, default=200, help="problems to score beyond the pool")
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--eval-temperature", type=float, default=None, help="default: train.py's")
    p.add_argument("--eval-top-p", type=float, default=None, help="default: train.py's")
    a = p.parse_args()

    import torch
    import train as T
    from data import format_tasks
    from rewards import evaluate
    from data import embedded_tasks
    from dist import Dist
    given = {"n_train": a.n_train, "eval_temperature": a.eval_temperature, "eval_top_p": a.eval_top_p}
    cfg = T.Config(seed=a.seed, eval_k=a.eval_k, **{k: v for k, v in given.items() if v is not None})
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(min(os.cpu_count() or 1, 8))
    levels = tuple(map(int, cfg.embedded_levels.split(",")))
    pool, probe = embedded_tasks(cfg.n_train, a.n_probe, cfg.seed, levels)   # the run's pool; new problems
    model, tok, engine = T.load_model_and_engine(cfg, Dist(cfg.dist_timeout), None if a.adapter == "none" else a.adapter)
    pool, probe, fmt = format_tasks(cfg, tok, pool, probe)
    known = {fact(t) for t in pool}
    groups = {}                                       # (level, fact in the pool) -> problems
    for t in probe:
        groups.setdefault((t.level, fact(t) in known), []).append(t)
    scores = {key: (len(g), evaluate(cfg, engine, g, fmt)) for key, g in groups.items()}
    for in_pool in (True, False):                     # "all": the groups' means weighted by their sizes
        part = [(n, r) for (lv, known_), (n, r) in scores.items() if lv != "all" and known_ == in_pool]
        n = sum(m for m, _ in part)
        if n:
            scores[("all", in_pool)] = (n, {key: sum(m * r[key] for m, r in part) / n for key in part[0][1]})
    k = f"eval/avg@{a.eval_k}"
    print(f"adapter {a.adapter}, seed {cfg.seed}: {len(pool)} pool prompts, {len(probe)} other problems, "
          f"avg@{a.eval_k} at T = {cfg.eval_temperature:g}, top-p {cfg.eval_top_p:g} / greedy; "
          f"the run's held-out set (the first {cfg.n_eval}): "
          f"{sum(fact(t) in known for t in probe[:cfg.n_eval]) / cfg.n_eval:.3f} of its facts in the pool")
    print(f"| level | fact in the pool: n, avg@{a.eval_k}, greedy | new fact: n, avg@{a.eval_k}, greedy |")
    print("|---|---|---|")
    for level in sorted({lv for lv, _ in scores}, key=lambda x: (x == "all", str(x))):
        cells = [f"{n}, {r[k]:.3f}, {r['eval/greedy']:.3f}" if n else "0, –, –"
                 for n, r in (scores.get((level, in_pool), (0, {})) for in_pool in (True, False))]
        print(f"| {LEVELS.get(level, level)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
