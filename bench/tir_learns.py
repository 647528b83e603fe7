"""Tool-integrated RL that learns (docs/tools.md): from one tool warm-up per seed, SPO with tools, GRPO 4x4 with
tools and SPO without tools, the same steps and trained responses each, held-out at the start and end of RL.

    python bench/tir_learns.py --seeds 3                        # 3 arms x 3 seeds
    python bench/tir_learns.py --seeds 1 --arms "SPO tools"     # one arm, seed 0
    python bench/tir_learns.py --report                         # the table from the records
    python bench/tir_learns.py --set learning_rate=5e-5         # another setting: its own rows

The task: `--dataset embedded-tools` at its default levels (data._make_tool): products written as an expression
(level 1), and operations said in words (levels 4-9: a sum of three, a square, a remainder, twice-plus, a
difference, times-minus), where the model must write the expression and state the number the tool printed. The warm-up (extensions/sft.py,
once per seed, ~1 min) shows 16 level-1 problems, none of the pool or the held-out set, so the problems in words
are what RL has to learn. Every arm of a seed starts from that seed's adapter (the no-tools arm with the tool
off); the same pool, held-out set, learning rate, temperature and steps x 16 trained responses.

Each finished (arm, seed) appends its record to bench/results/tir/runs.jsonl and a rerun skips what is
recorded. The report (tir.md beside it; with --set, tir-<setting>.md) ends with `tir gain <x>`: SPO with tools,
held-out avg@4 at the end of RL minus at its start, median over seeds.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from child import ROOT, emit, run_child

sys.path.insert(0, ROOT)

ARMS = {
    "SPO tools": dict(algo="spo", tools="python"),
    "GRPO 4x4 tools": dict(algo="grpo", group_size=4, tools="python"),
    "SPO no tools": dict(algo="spo", tools="none"),
}
HEADLINE = "SPO tools"
# fixed before the runs; the record keeps it, and rows of another setting are not compared
SETTING = dict(n_train=96, n_eval=48, steps=20, offline_samples=4, learning_rate=2e-4, temperature=1.0,
               max_completion_length=96, batch_size=16)
SERIES = ("reward", "tools/calls", "tools/turns", "tools/errors", "tools/output_token_share", "time/step")
TMP = "/tmp/spo-tir"


def setting_name() -> str:
    return "-".join(f"{k}{v}" for k, v in SETTING.items() if k in ("learning_rate", "steps", "temperature"))


def warmup(seed: int) -> str:
    """The seed's tool warm-up adapter (extensions/sft.py, demonstrations outside this setting's pool)."""
    out = f"{TMP}/sft-s{seed}"
    if not os.path.isdir(f"{out}/adapter"):
        subprocess.run([sys.executable, "-m", "extensions.sft", "--seed", str(seed), "--n-train",
                        str(SETTING["n_train"]), "--output-dir", out], cwd=ROOT, check=True, capture_output=True)
    return f"{out}/adapter"


def one(arm: str, seed: int) -> dict:
    import train as T
    out = f"{TMP}/{arm.replace(' ', '_')}-s{seed}-{setting_name()}"
    cfg = T.Config(seed=seed, dataset="embedded-tools", init_adapter=warmup(seed), eval_every=0, save_every=0,
                   overwrite=True, output_dir=out, **SETTING, **ARMS[arm])
    t0 = time.time()
    return summary(cfg, T.train(cfg), time.time() - t0)


def summary(cfg, res: dict, wall_s: float) -> dict:
    """An arm's record from train.train's result (`cfg` its Config)."""
    from data import read_tasks
    from vs_trl import tracker_figures
    out, hist = cfg.output_dir, res["history"]
    row = {"start": res["first_eval"], "end": res["final_eval"], "responses": len(hist) * cfg.batch_size,
           "wall_s": wall_s, "rl_s": sum(m["time/step"] for m in hist),
           "series": {k: [m.get(k, 0.0) for m in hist] for k in SERIES}, **tracker_figures(hist)}
    if os.path.exists(f"{out}/offline_values.json"):            # what the warm-up solves before RL, by level
        table = json.load(open(f"{out}/offline_values.json"))
        level = {t.prompt: t.level for t in read_tasks(cfg)[0]}                  # the run's own pool
        by = {}
        for p, rs in table.items():
            by.setdefault(level[p], []).append(statistics.mean(rs))
        row["offline_by_level"] = {lv: statistics.mean(v) for lv, v in sorted(by.items())}
        row["offline_spread"] = statistics.mean(0 < statistics.mean(rs) < 1 for rs in table.values())
    return row


def quarter(xs: list, last: bool) -> float:
    n = max(1, len(xs) // 4)
    return statistics.mean(xs[-n:] if last else xs[:n])


def report(rows: list, argv: list) -> str:
    seeds = sorted({r["seed"] for r in rows})
    get = {(r["arm"], r["seed"]): r for r in rows}
    setting = ", ".join(f"{k} {v}" for k, v in SETTING.items())
    lines = [f"`python bench/tir_learns.py {shlex.join(argv)}`: embedded-tools, {setting}; held-out avg@4 (T 0.6, "
             "top-p 0.95) and greedy\n",
             "| arm | seed | avg@4 start → end | greedy start → end | train reward (first → last quarter) "
             "| tool calls | turns | tool errors | tool-output share | Brier vs var(r), 2nd half | RL min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, e = r["start"], r["end"]
        tools = ARMS[r["arm"]]["tools"] == "python"
        q = lambda k: f"{quarter(r['series'][k], False):.2f} → {quarter(r['series'][k], True):.2f}" \
            if tools or not k.startswith("tools/") else "—"                        # noqa: E731
        brier = f"{r['brier_2nd']:.3f} vs {r['nobase_var_2nd']:.3f}" if "brier_2nd" in r else "—"
        lines.append(f"| {r['arm']} | {r['seed']} | {s['eval/avg@4']:.3f} → {e['eval/avg@4']:.3f} | "
                     f"{s['eval/greedy']:.3f} → {e['eval/greedy']:.3f} | {q('reward')} | {q('tools/calls')} | "
                     f"{q('tools/turns')} | {q('tools/errors')} | {q('tools/output_token_share')} | {brier} | "
                     f"{r['rl_s'] / 60:.1f} |")
    levels = sorted({k.rsplit("level", 1)[1] for r in rows for k in r["end"] if "_level" in k}, key=int)
    med = lambda arm, when, lv: statistics.median(                                   # noqa: E731
        get[arm, s][when][f"eval/avg@4_level{lv}"] for s in seeds if (arm, s) in get)
    if levels:
        lines += ["", "held-out avg@4 by level, start → end (median over seeds): " + "; ".join(
            f"{arm}: " + ", ".join(f"L{lv} {med(arm, 'start', lv):.2f}→{med(arm, 'end', lv):.2f}" for lv in levels)
            for arm in ARMS if any((arm, s) in get for s in seeds))]
    off = [r for r in rows if "offline_by_level" in r and r["arm"] == HEADLINE]
    if off:
        lines.append("before RL (the offline init, n0 per pool prompt), success by level: " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"L{lv} {v:.2f}" for lv, v in r["offline_by_level"].items())
            + f" ({r['offline_spread']:.0%} of prompts strictly between 0 and 1)" for r in off))
    gain = lambda arm, k, s: get[arm, s]["end"][k] - get[arm, s]["start"][k]       # noqa: E731
    for k, name in (("eval/avg@4", "avg@4"), ("eval/greedy", "greedy")):
        both = [s for s in seeds if (HEADLINE, s) in get and ("GRPO 4x4 tools", s) in get]
        d = [get[HEADLINE, s]["end"][k] - get["GRPO 4x4 tools", s]["end"][k] for s in both]
        if d:
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
            lines.append(f"{name} at the end, SPO tools minus GRPO 4x4 tools: {statistics.mean(d):+.3f} ± {se:.3f} "
                         f"(paired by seed: " + ", ".join(f"{x:+.3f}" for x in d) + ")")
    spo = [s for s in seeds if (HEADLINE, s) in get]
    if not spo:
        return "\n".join(lines) + "\n"
    g, gg = (statistics.median(gain(HEADLINE, k, s) for s in spo) for k in ("eval/avg@4", "eval/greedy"))
    lines += ["", f"tir gain {g:.3f}  (SPO tools, held-out avg@4 end − start of RL, median over {len(spo)} seeds; "
                  f"greedy {gg:+.3f})"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "tir"))
    p.add_argument("--report", action="store_true", help="only re-print the report from the records")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of SETTING (its rows are then compared only with each other)")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    from vs_trl import overrides
    bad = [x for x in a.set if x.partition("=")[0] not in SETTING]
    if bad:
        sys.exit(f"error: --set {bad[0]!r}: the fields of SETTING are {', '.join(SETTING)}")
    SETTING.update(overrides(a.set))
    if a.arm:
        emit(one(a.arm, a.seed))
        return
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "runs.jsonl")              # one line per (arm, seed), appended
    rows = [json.loads(x) for x in open(log)] if os.path.exists(log) else []
    rows = [r for r in rows if r["setting"] == SETTING and r["seed"] < a.seeds]
    if not a.report:
        done = {(r["arm"], r["seed"]) for r in rows}
        for seed in range(a.seeds):
            for arm in a.arms:
                if (arm, seed) in done:                  # recorded by an earlier run: skipped
                    continue
                rows.append({"arm": arm, "seed": seed, "setting": SETTING,
                             **run_child(__file__, "--arm", arm, "--seed", seed,
                                         *[x for kv in a.set for x in ("--set", kv)])})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "series"}), flush=True)
                with open(log, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    rows.sort(key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))
    text = report(rows, sys.argv[1:])
    print(text)
    with open(os.path.join(a.out, f"tir-{setting_name()}.md" if a.set else "tir.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
