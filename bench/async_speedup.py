"""No synchronisation barrier, measured: continuous group-free collection against lock-step, on real vLLM, with
tool calls whose latency has a long tail (the paper's agentic setting, §5.4).

    python bench/async_speedup.py --seeds 3            # 5 arms x 3 seeds, 5-12 min an arm (25-35 min a seed)
    python bench/async_speedup.py --seeds 1 --steps 2  # a quick look

Workload: tool-integrated rollouts (`--tools python`, the embedded tool task's levels 1-3, products and sums written
as expressions, after `sft.py`'s warm-up, which the bench runs if runs/async-sft/adapter is missing; a pool of 64
prompts, so F = 2 leaves the sampler 32 to choose from), 96 tokens a response: a level-3 response (the longest
expression, its tool output and the answer) takes ~70, so no correct response is cut by the budget. Every tool
call goes through `--sandbox-url` to bench/latency_sandbox.py, a loopback server of this process speaking
SandboxFusion's /run_code schema: it runs the code in the project's sandbox and answers after a latency
drawn from the log-normal fitted to the paper's Fig. 4b rollout times, times --scale. The latency is on while the
training loop runs; the offline init and the evaluations (not timed) call the same server without it.

    SPO lock-step              one response per prompt; every turn waits for the turn's slowest tool call
    SPO continuous F=1.5, F=2  F x 16 trajectories in flight; a batch is 16 landed ones, oldest first (collector.py)
    GRPO lock-step             4 prompts x 4, waits for the slowest
    GRPO first-groups F=2      the first 4 groups whose 4 members all landed (the paper's Fig. 5 scheme)

Same model, LoRA, learning rate (--lr 5e-5: at docs/tools.md's 2e-4 four steps of 16 on this warmed-up, nearly
deterministic policy are unstable, lock-step or not), loss and --steps x 16 trained responses per arm, each run
its own process; seeds fixed by --seeds before the run; the arms of a seed share one step-0 evaluation (held-out
16 x avg@2 and greedy; a rerun takes it from the seed's records) and the SPO arms one offline init (n0 = 2; both
computed by the seed's first arm, untimed; a rerun that resumes a seed after its SPO lock-step arm samples its
own offline init). Prints a table and, last, `speedup <x>`: trained responses per second of loop wall time (the
sum of the steps' wall time: collection, update, tracker, adapter swap), SPO continuous F = 2 over GRPO lock-step
of the same seed, median over seeds; beside it what agentic_sim's model predicts for the same latencies. Each
finished (arm, seed) appends its record to bench/results/async/latency_runs.jsonl, naming the machine (boot id) it
was timed on, and a rerun skips what is recorded; a seed's arms are timed on one machine, so a rerun on another
machine times an incomplete seed's arms again. The report goes to latency.md (another setting's, e.g. --scale 0.16, to
latency-scale0.16.md beside it).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

from child import ROOT, emit, run_child

sys.path.insert(0, ROOT)

ARMS = {
    "SPO lock-step": dict(algo="spo"),
    "SPO continuous F=1.5": dict(algo="spo", collect="continuous", oversample=1.5),
    "SPO continuous F=2": dict(algo="spo", collect="continuous", oversample=2.0),
    "GRPO lock-step": dict(algo="grpo", group_size=4),
    "GRPO first-groups F=2": dict(algo="grpo", group_size=4, collect="continuous", oversample=2.0),
}
HEADLINE = "SPO continuous F=2"
WARMUP = os.path.join(ROOT, "runs", "async-sft", "adapter")     # sft.py for this pool (its demos avoid it)
TMP = "/tmp/spo-async"
SETTING = ("scale", "steps", "tokens", "lr", "backlog")  # a record's setting: rows of another setting are not mixed in
BEFORE = {"tokens": 64, "lr": 2e-4, "backlog": 5}       # the setting of records that predate a field
DEFAULTS = {"seeds": 3, "steps": 4, "scale": 0.08, "tokens": 96, "lr": 5e-5, "backlog": 1024}   # main()'s flags


def setting(r: dict) -> dict:
    return {k: r.get(k, BEFORE.get(k)) for k in SETTING}


def machine(r: dict) -> str:
    return r.get("machine", "earlier")      # records that predate the field: all timed on one earlier machine


def this_machine() -> str:
    return open("/proc/sys/kernel/random/boot_id").read()[:8]     # the machine (boot) this run's seconds are timed on


def one_machine(rows: list, arms: list, here: str | None) -> tuple[list, list]:
    """Seconds are compared within a seed, so a seed's arms must be timed on one machine (the same code ran 2x
    slower on another). Per seed keep the records of the machine that timed it last; when this run (machine
    `here`) is to go on with a seed left incomplete by another machine, it times all of the seed's arms again.
    Returns (kept, set aside); the set-aside records stay in the log and the report counts them."""
    last = {r["seed"]: machine(r) for r in rows}                   # rows in the log's order
    for seed in last:
        mine = {r["arm"] for r in rows if r["seed"] == seed and machine(r) == last[seed]}
        if here and last[seed] != here and not set(arms) <= mine:
            last[seed] = here
    return ([r for r in rows if machine(r) == last[r["seed"]]], [r for r in rows if machine(r) != last[r["seed"]]])


def shared_first_eval(T, path: str) -> None:
    """The step-0 evaluation is the same for every arm of a seed (same adapter, held-out set and seeds): the
    seed's first arm computes it and writes `path`, the others read it instead of spending a minute of CPU."""
    evaluate = T.evaluate

    def first(*args):
        T.evaluate = evaluate                              # only the first call (step 0) is shared
        if os.path.exists(path):
            return json.load(open(path))
        res = evaluate(*args)
        json.dump(res, open(path, "w"))
        return res
    T.evaluate = first


def report_name(this: dict) -> str:
    """latency.md for the default setting; another setting's table beside it (latency-scale0.16.md), not over it."""
    default = {k: DEFAULTS[k] for k in SETTING}
    return "latency" + "".join(f"-{k}{v:g}" for k, v in this.items() if v != default[k]) + ".md"


def one(arm: str, seed: int, a) -> dict:
    import train as T
    from latency_sandbox import set_latency
    loop, finish = T.loop, T.finish
    T.loop = lambda *x: (set_latency(a.url, True, seed), loop(*x))[1]      # latency on for the timed loop only
    T.finish = lambda *x: (set_latency(a.url, False), finish(*x))[1]       # off for the final evaluation
    os.makedirs(TMP, exist_ok=True)
    shared_first_eval(T, f"{TMP}/eval0-s{seed}.json")
    shared = f"{TMP}/SPO_lock-step-s{seed}/offline_values.json"            # the seed's first SPO arm writes it
    kw = dict(ARMS[arm])
    if kw["algo"] == "spo" and arm != "SPO lock-step" and os.path.exists(shared):
        kw["offline_values"] = shared
    cfg = T.Config(seed=seed, steps=a.steps, engine="vllm", dataset="embedded-tools", tool_levels="1,2,3",
                   tools="python", init_adapter=WARMUP, n_train=64, n_eval=16, eval_k=2, offline_samples=2,
                   learning_rate=a.lr, temperature=1.0,
                   max_completion_length=a.tokens, sandbox_url=a.url, sandbox_workers=64,
                   tool_timeout=600.0,       # the client waits run_timeout + 30 s: the tail (P < 1e-4 at scale 0.16),
                                             # not a cut; the server runs the code itself for at most 10 s
                   eval_every=0, save_every=0, sync_check_every=0, overwrite=True,
                   output_dir=f"{TMP}/{arm.replace(' ', '_').replace('=', '')}-s{seed}", **kw)
    res = T.train(cfg)
    hist = res["history"]
    wall = sum(m["time/step"] for m in hist)
    n = len(hist) * cfg.batch_size
    mean = lambda k: statistics.mean(m.get(k, 0.0) for m in hist)        # noqa: E731
    row = {"start": res["first_eval"], "end": res["final_eval"], "responses": n, "loop_wall": wall,
           "responses_per_s": n / wall, "s_per_batch": wall / len(hist), "generate_s": mean("time/generate"),
           "train_s": mean("time/train"), "tool_calls": mean("tools/calls"), "turns": mean("tools/turns"),
           "tool_errors": mean("tools/errors"), "tool_token_share": mean("tools/output_token_share"),
           "len_trained": mean("response_length"), "reward_trained": mean("reward"),
           "truncated": mean("truncation_rate")}
    if cfg.collect == "continuous":
        last = hist[-1]
        row.update({k: last[f"collect/{k}_landed"] for k in ("len", "reward", "tool_s")},
                   latency_landed=last["collect/latency_landed"],       # ("latency" names the distribution)
                   tool_s_trained=mean("collect/tool_s_trained"), latency_trained=mean("collect/latency_trained"),
                   waited_due_s=mean("collect/waited_due_s"), staleness=mean("collect/staleness_mean"),
                   staleness_max=max(m["collect/staleness_max"] for m in hist),
                   dropped=last["collect/dropped_stale"], launched=last["collect/launched"])
    else:    # every launched response is trained; a turn's tool seconds are its slowest call, shared
        row.update({"len": row["len_trained"], "reward": row["reward_trained"],
                    "tool_wait_s": mean("tools/seconds")})
    return row


def predicted(scale: float, trials: int = 20_000) -> dict:
    """agentic_sim's model for these latencies, one tool call a response: time to a batch of 16 (lock-step: the
    slowest of 16; group-free F = 2: the 16th of 32) and the speedup from latency alone."""
    from agentic_sim import group_based, group_free
    from latency_sandbox import latencies
    lock = group_based(latencies(scale, 0, trials * 16).reshape(trials, 16), 4, 4).mean()
    free = group_free(latencies(scale, 1, trials * 32).reshape(trials, 32), 16).mean()
    return {"lockstep_s": float(lock), "free_s": float(free), "speedup": float(lock / free)}


def report(rows: list, argv: list, aside: int = 0) -> str:
    scale, steps = rows[0]["scale"], rows[0]["steps"]
    avg = next(k for k in rows[0]["end"] if k.startswith("eval/avg@") and "_level" not in k)   # eval/avg@k (eval_k)
    def med(arm, f):
        xs = [f(r) for r in rows if r["arm"] == arm]
        return statistics.median(xs) if xs else float("nan")
    lines = [f"`python bench/async_speedup.py {' '.join(argv)}`: embedded tool task after sft.py, vLLM on the CPU, "
             f"tool latency {rows[0].get('latency', f'log-normal (paper Fig. 4b fit) x {scale:g}')}, "
             f"{steps} steps x 16 trained responses per arm, {setting(rows[0])['tokens']} tokens a response, "
             f"learning rate {setting(rows[0])['lr']:g}\n",
             "| arm | seed | trained responses/s | wall per batch (generate, update) | tool latency trained vs landed | "
             "waited for due | length trained vs landed | reward trained vs landed | cut by the budget | staleness mean/max (dropped) | "
             f"held-out {avg[5:]} | greedy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cont = "launched" in r
        lat = (f"{r['tool_s_trained']:.1f} vs {r['tool_s']:.1f} s" if cont else f"turn waits {r['tool_wait_s']:.1f} s")
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['responses_per_s']:.3f} | {r['s_per_batch']:.1f} s ({r['generate_s']:.1f}, "
            f"{r['train_s']:.1f}) | {lat} | {r['waited_due_s']:.1f} s |" if cont else
            f"| {r['arm']} | {r['seed']} | {r['responses_per_s']:.3f} | {r['s_per_batch']:.1f} s ({r['generate_s']:.1f}, "
            f"{r['train_s']:.1f}) | {lat} | — |")
        lines[-1] += (f" {r['len_trained']:.1f} vs {r['len']:.1f} | {r['reward_trained']:.2f} vs {r['reward']:.2f} | "
                      f"{r.get('truncated', float('nan')):.2f} | "
                      + (f"{r['staleness']:.2f}/{r['staleness_max']} ({r['dropped']})" if cont else "0 (0)")
                      + f" | {r['start'][avg]:.3f} → {r['end'][avg]:.3f} | "
                        f"{r['start']['eval/greedy']:.3f} → {r['end']['eval/greedy']:.3f} |")
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["arm"], r["seed"]): r for r in rows}
    paired = {arm: {s: by[arm, s]["responses_per_s"] / by["GRPO lock-step", s]["responses_per_s"] for s in seeds
                    if (arm, s) in by and ("GRPO lock-step", s) in by}
              for arm in ARMS}           # paired by seed: each seed's arms were timed on one machine
    ratio = {arm: statistics.median(paired[arm].values() or [float("nan")]) for arm in ARMS}
    lines += ["", "Median over seeds of each seed's trained responses/s over its GRPO lock-step: " +
              ", ".join(f"{arm} {ratio[arm]:.2f}x" for arm in ARMS if arm != "GRPO lock-step")]
    if aside:
        lines.append(f"{aside} records of this setting timed on another machine than the rest of their seed are "
                     "in latency_runs.jsonl, not in this table")
    if all((arm, s) in by for arm in (HEADLINE, "SPO lock-step") for s in seeds):
        d = [by[HEADLINE, s]["end"][avg] - by["SPO lock-step", s]["end"][avg] for s in seeds]
        lines.append(f"held-out {avg[5:]} at the end, {HEADLINE} minus SPO lock-step, per seed: "
                     + ", ".join(f"{x:+.3f}" for x in d))
    p = predicted(scale)
    per_seed = []
    for s, measured in paired[HEADLINE].items():   # each seed's own compute: the seeds' machines differ, so does
        lock = by["GRPO lock-step", s]              # the share of a batch that is tool waiting
        cpu = lock["s_per_batch"] - lock["tool_wait_s"]
        per_seed.append(f"seed {s}: {cpu:.1f} s, predicts {(cpu + p['lockstep_s']) / (cpu + p['free_s']):.2f}x, "
                        f"measured {measured:.2f}x")
    lock_wait = med("GRPO lock-step", lambda r: r["tool_wait_s"])
    free_s, free_wait = med(HEADLINE, lambda r: r["s_per_batch"]), med(HEADLINE, lambda r: r["waited_due_s"])
    lines += [f"simulation (agentic_sim, latency alone, one call a response): a batch of 16 in {p['lockstep_s']:.1f} s "
              f"lock-step vs {p['free_s']:.1f} s group-free F = 2: {p['speedup']:.2f}x. With the seconds of a GRPO "
              f"lock-step batch that are not tool waiting (generation, update; measured) added to both: "
              + "; ".join(per_seed) + f". Median: GRPO lock-step waits {lock_wait:.1f} s a batch on tools; {HEADLINE} "
              f"takes {free_s:.1f} s a batch, {free_wait:.1f} s of it waiting for due trajectories.",
              "", f"speedup {ratio[HEADLINE]:.2f}  ({HEADLINE} over GRPO lock-step, trained responses per second "
                  f"of loop wall time, paired by seed, median over {len(seeds)} seeds)"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--scale", type=float, default=DEFAULTS["scale"], help="tool latency = paper Fig. 4b seconds x scale")
    p.add_argument("--tokens", type=int, default=DEFAULTS["tokens"], help="--max-completion-length of every arm")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="--learning-rate of every arm")
    p.add_argument("--backlog", type=int, default=DEFAULTS["backlog"], help="the tool server's listen backlog (at 5, a burst of "
                   "calls had connections reset, scored as wrong answers)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "async"))
    p.add_argument("--report", action="store_true", help="only re-print the report from the records")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        emit(one(a.arm, a.seed, a))
        return
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "latency_runs.jsonl")        # one line per (arm, seed, setting), appended
    rows = [json.loads(x) for x in open(log)] if os.path.exists(log) else []
    this = {k: getattr(a, k) for k in SETTING}
    rows = [r for r in rows if setting(r) == this and r["seed"] < a.seeds and r["arm"] in a.arms.split(",")]
    here = None if a.report else this_machine()
    rows, aside = one_machine(rows, a.arms.split(","), here)
    if not a.report:
        from latency_sandbox import MU, SIGMA, LatencySandbox
        dist = f"log-normal fit to the paper's Fig. 4b (median {np.exp(MU):.0f} s, sigma {SIGMA:.2f}) x {a.scale:g}"
        if not os.path.isdir(WARMUP):
            subprocess.run([sys.executable, "-m", "extensions.sft", "--n-train", "64", "--tool-levels", "1,2,3",
                            "--output-dir", os.path.dirname(WARMUP)], cwd=ROOT, check=True)
        done = {(r["arm"], r["seed"]) for r in rows}
        shutil.rmtree(TMP, ignore_errors=True)     # what the arms share (offline init, step-0 eval): this run's only
        os.makedirs(TMP)
        for seed, start in {r["seed"]: r["start"] for r in rows}.items():   # ... but a resumed seed keeps its
            with open(f"{TMP}/eval0-s{seed}.json", "w") as f:                 # recorded step-0 evaluation
                json.dump(start, f)
        with LatencySandbox(a.scale, on=False, backlog=a.backlog) as box:
            for seed in range(a.seeds):
                for arm in a.arms.split(","):
                    if (arm, seed) in done:                  # recorded by an earlier run: skipped
                        continue
                    args = [x for k, v in this.items() for x in (f"--{k}", v)]
                    rows.append({"arm": arm, "seed": seed, **this, "latency": dist, "machine": here, **run_child(
                        __file__, "--arm", arm, "--seed", seed, *args, "--url", box.url)})
                    print(json.dumps(rows[-1]), flush=True)
                    with open(log, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    rows.sort(key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))
    text = report(rows, sys.argv[1:], len(aside))
    print(text)
    with open(os.path.join(a.out, report_name(this)), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
