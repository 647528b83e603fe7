"""The default SPO run against the peer a user would pick instead: TRL's GRPOTrainer, side by side.

    pip install trl==1.16.0                  # optional bench dependency (pip install -e ".[bench]")
    python bench/vs_trl.py                   # 3 seeds x (TRL GRPO, our GRPO, our SPO), ~90 min on 2 cores
    python bench/vs_trl.py --seeds 5 --arms "our SPO (default)" "our GRPO 4x4" "our SPO (no baseline)" \
        "our SPO (no offline init)" "TRL GRPO 4x4" "SPO in TRL"       # the paper's arms and SPO inside TRL
    python bench/vs_trl.py --seeds 1 --steps 2 --n-eval 4    # smoke run
    python bench/vs_trl.py --eval-every 8    # ... and held-out every 8 steps: each arm's curve, not only its end
    python bench/vs_trl.py --eval-temperature 1 --eval-top-p 1 --out bench/results/vs_trl   # the T = 1 record

Same task (the embedded pool and held-out set of each seed, after the same format warm-up), model
(SmolLM2-135M-Instruct, fp32), LoRA (r 16, alpha 32, the 7 projections), train.py's learning rate (constant),
16 responses per step with 2 optimizer updates, train.py's temperature, the same new-token budget, the same chat
prompt and the same reward function, --steps steps. TRL runs with its defaults otherwise (its own loss, epsilon
0.2, no KL), a constant learning rate and no gradient checkpointing (the faster and better of the two TRL
settings measured). "SPO in TRL" is extensions/trl_spo.py's SPOTrainer with the same TRL settings, 16 prompts
x 1 response, n0 and the tracker's settings from train.py's, Clip-Higher 0.28 (SPOConfig's default). Every arm is
evaluated by one function, rewards.evaluate: held-out avg@k at --eval-temperature / --eval-top-p (default:
train.py's, the paper's 0.6 / 0.95) and greedy accuracy. Each row records that protocol, and a report covers
only the rows of the protocol asked for: bench/results/vs_trl_paper_eval (the default --out) holds the
paper's protocol, bench/results/vs_trl the T = 1 / top-p 1 record.

Prints, per seed and arm, held-out (sampled and greedy) at the start and the end and seconds per step
(the training loop only: SPO's offline init and all evaluations excluded, reported separately), then
medians and the paired differences SPO - TRL and SPO - our GRPO. Two more SPO arms run when named with
--arms: "our SPO (short window)" (the tracker window rho in [0.5, 0.8] instead of the paper's [0.875, 0.96];
docs/results.md) and "our SPO (uniform, short window)" (the same with
--uniform-sampling, the ablation of Eq. 11), and "our SPO (pool 64)" (--n-train 64: a pool four times the
batch, so Eq. 11 can pass over solved prompts; the embedded held-out set follows the pool, so it is another
32 problems and this arm is reported but paired with none), and the paper's two ablations, "our SPO (no
baseline)" (--no-baseline) and "our SPO (no offline init)" (--offline-samples 0).

    python bench/vs_trl.py --set learning_rate=5e-5 --set sft_steps=20 --set embedded_levels=3,5,6,8,9 ...

--set FIELD=VALUE changes a train.py option for every arm (TRL's too: its task, warm-up, rate, temperature and
budget come from the same Config). Each row records its setting (the options that define the task and the
budget) and its evaluation protocol; a report covers the rows of the setting and protocol asked for. Each
finished (arm, seed) appends its row, and a rerun skips the (arm, seed) pairs already recorded, so a table
grows over several runs. Our arms also record what the tracker does: mean adv/raw_var over mean
adv/noBaseline_var (the paper's Fig. 3 ratio), the Brier score against the reward variance over the second half,
GRPO's degenerate share and the variance of its live groups. Run it alone: two torch processes slow each other
~10x.
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import time

from child import emit, run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHORT_WINDOW = dict(rho_min=0.5, rho_max=0.8)  # a shorter tracker memory than the paper's (windows 2-5 visits)
OURS = {                                     # our arms: run folder name, Config fields beside the defaults
    "our GRPO 4x4": ("GRPO", dict(algo="grpo", group_size=4)),
    "our SPO (default)": ("SPO", {}),
    "our SPO (short window)": ("SPO-short-window", SHORT_WINDOW),
    "our SPO (uniform, short window)": ("SPO-uniform", dict(uniform_sampling=True, **SHORT_WINDOW)),
    "our SPO (pool 64)": ("SPO-pool64", dict(n_train=64)),
    "our SPO (no baseline)": ("SPO-no-baseline", dict(no_baseline=True)),
    "our SPO (no offline init)": ("SPO-no-offline", dict(offline_samples=0)),
}
# the options that define a row's task and budget: rows of one setting are compared, others are not
SETTING = ("embedded_levels", "sft_steps", "n_train", "offline_samples", "learning_rate", "temperature",
           "max_completion_length", "batch_size", "num_minibatches")
OLD_SETTING = dict(embedded_levels="1,1,1,2,4", sft_steps=0, n_train=32, offline_samples=4, learning_rate=2e-4,
                   temperature=1.0, max_completion_length=16, batch_size=16, num_minibatches=2)   # rows before the field
TRL_SPO = "SPO in TRL"                       # extensions/trl_spo.py: the project's SPO inside TRL's GRPOTrainer
TRL_ARMS = ["TRL GRPO 4x4", TRL_SPO]
ARMS = [TRL_ARMS[0], *OURS, TRL_SPO]
PEERS, SPO_DEFAULT = ARMS[:2], "our SPO (default)"
DEFAULT_ARMS = [*PEERS, SPO_DEFAULT]         # the ablation arms run only when named with --arms
ABLATIONS = [x for x in OURS if x not in DEFAULT_ARMS]   # and TRL_SPO: run only when named


def protocol_of(row: dict) -> list:
    """A recorded row's evaluation [temperature, top-p]; rows recorded before the field are T = 1, top-p 1."""
    return row.get("eval", [1.0, 1.0])


def setting_of(row: dict) -> dict:
    return row.get("setting", OLD_SETTING)


def overrides(pairs: list) -> dict:
    """--set FIELD=VALUE pairs as Config fields, each value parsed as its field's type."""
    import train as T
    out = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        default = getattr(T.Config(), k, None)
        if k not in T.Config.__dataclass_fields__ or not v:
            sys.exit(f"error: --set {pair!r}: expected FIELD=VALUE with a train.py option (e.g. learning_rate=5e-5)")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            v = type(default)(v)
        elif default is None and v.replace(".", "", 1).isdigit():              # an optional number (sft_steps)
            v = float(v) if "." in v else int(v)
        out[k] = v
    return out


def tracker_figures(history: list) -> dict:
    """What the baseline did over a run: the Fig. 3 variance ratio, the Brier score and the reward variance over
    the second half, GRPO's degenerate share and live-group variance (means over the steps)."""
    mean = lambda k, h=history: statistics.mean(m[k] for m in h)          # noqa: E731
    half = history[len(history) // 2:]
    out = {"var_ratio": mean("adv/raw_var") / max(mean("adv/noBaseline_var"), 1e-12),
           "nobase_var_2nd": mean("adv/noBaseline_var", half)}
    if "grpo/degenerate_share" in history[0]:
        out.update(degenerate=mean("grpo/degenerate_share"), live_var=mean("grpo/live_raw_var"),
                   raw_var=mean("adv/raw_var"))
    elif history[0]["tracker/brier"] == history[0]["tracker/brier"]:          # SPO (not NaN)
        out.update(brier_2nd=mean("tracker/brier", half), raw_var=mean("adv/raw_var"))
    return out


def pool(arm: str) -> int:
    """The arm's --n-train: the embedded held-out set follows the pool, so only arms with one pool pair."""
    import train as T
    return OURS.get(arm, ("", {}))[1].get("n_train", T.Config().n_train)   # (--set n_train moves every arm)


def ours(arm: str, seed: int, a, out: str) -> dict:
    import train as T
    name, extra = OURS[arm]
    cfg = T.Config(seed=seed, steps=a.steps, eval_every=a.eval_every, n_eval=a.n_eval, save_every=0,
                   eval_temperature=a.eval_temperature, eval_top_p=a.eval_top_p, overwrite=True,
                   output_dir=os.path.join(out, f"{name}-s{seed}"), **{**overrides(a.set), **extra})
    t = time.time()
    res = T.train(cfg)
    step_s = [m["time/step"] for m in res["history"]]
    return {"start": res["first_eval"], "end": res["final_eval"], "s_per_step": statistics.mean(step_s),
            "wall": time.time() - t, "curve": res["evals"], **tracker_figures(res["history"])}


def trl(seed: int, a, out: str, spo: bool = False) -> dict:
    """TRL's GRPOTrainer, 4 prompts x 4 responses; spo: extensions/trl_spo.SPOTrainer in its place, 16 prompts x 1
    (the project's tracker, sampler and advantages; TRL's generation, loss and optimizer)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import train as T
    from data import format_tasks, read_tasks
    from rewards import RewardFn
    from data import system_message
    from rollout import HFEngine
    from models import LoraArgs, load_policy
    cfg = T.Config(seed=seed, n_eval=a.n_eval, eval_temperature=a.eval_temperature, eval_top_p=a.eval_top_p,
                   **overrides(a.set))
    torch.manual_seed(seed)
    model, tok, _ = load_policy(lora=LoraArgs(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    train, held, fmt = format_tasks(cfg, tok, *read_tasks(cfg))     # train.py's tasks and chat prompts
    if T.warmup_steps(cfg):                                          # train.py's format warm-up, the same start
        from extensions.sft import warm_up_format
        warm_up_format(cfg, model, tok, {t.prompt for t in train + held})
    system = [{"role": "system", "content": system_message(cfg)}] if system_message(cfg) else []
    ds = Dataset.from_list([{"prompt": system + [{"role": "user", "content": t.prompt}], "answer": t.answer}
                            for t in train])
    rf = RewardFn()

    def reward(completions, answer, **_):
        return [rf(c[0]["content"] if isinstance(c, list) else c, g) for c, g in zip(completions, answer)]

    engine = HFEngine(model, tok)
    start = T.evaluate(cfg, engine, held, fmt)
    curve, eval_s = [{"step": 0, **start}], []

    class EvalEvery(TrainerCallback):
        """Held-out every --eval-every steps, as train.py does. rewards.evaluate seeds torch's generator; TRL
        samples from it, so its state is restored after, and the run trains as it would without evaluations."""
        def on_step_end(self, args, state, control, model=None, **_):
            step, done = divmod(state.global_step, cfg.num_minibatches)     # optimizer steps -> our steps
            if a.eval_every and not done and step % a.eval_every == 0 and step < a.steps:
                rng, t0 = torch.get_rng_state(), time.time()
                curve.append({"step": step, **T.evaluate(cfg, HFEngine(model, tok), held, fmt)})
                torch.set_rng_state(rng)
                eval_s.append(time.time() - t0)
    same = dict(
        output_dir=os.path.join(out, f"TRL{'-SPO' if spo else ''}-s{seed}"), seed=seed, use_cpu=True, bf16=False,
        report_to="none", learning_rate=cfg.learning_rate, lr_scheduler_type="constant",
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=False,
        per_device_train_batch_size=cfg.batch_size // cfg.num_minibatches,
        steps_per_generation=cfg.num_minibatches,                  # 16 responses, 2 optimizer updates each
        max_steps=a.steps * cfg.num_minibatches, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, save_strategy="no", logging_steps=cfg.num_minibatches)
    if spo:
        from extensions.trl_spo import SPOConfig, SPOTrainer
        args = SPOConfig(**same, spo_offline_samples=cfg.offline_samples, spo_rho_min=cfg.rho_min,
                         spo_rho_max=cfg.rho_max, spo_d_half=cfg.d_half, spo_sampling_epsilon=cfg.sampling_epsilon)
        trainer = SPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                             callbacks=[EvalEvery()])
    else:
        args = GRPOConfig(**same, num_generations=4)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                              callbacks=[EvalEvery()])
    t = time.time()
    trainer.train()
    wall = time.time() - t - sum(eval_s) - getattr(trainer, "spo_offline_s", 0.0)   # the loop only, as for ours
    end = T.evaluate(cfg, HFEngine(trainer.model, tok), held, fmt)
    logged = [h for h in trainer.state.log_history if "adv/raw_var" in h]      # SPO in TRL: what the tracker did
    return {"start": start, "end": end, "s_per_step": wall / a.steps, "wall": wall,
            "curve": curve + [{"step": a.steps, **end}], **(tracker_figures(logged) if logged else {})}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1 (those "
                   "not yet recorded) and add them to runs.jsonl (the report covers every recorded run)")
    p.add_argument("--arms", nargs="+", default=None, help="a subset of the arms, e.g. to finish a seed cut short: "
                   + " | ".join(repr(x) for x in ARMS))
    p.add_argument("--steps", type=int, default=None, help="default: train.py's default --steps")
    p.add_argument("--n-eval", type=int, default=None, help="default: train.py's default --n-eval")
    p.add_argument("--eval-every", type=int, default=0, help="held-out every N steps too (default: start and end)")
    p.add_argument("--eval-temperature", type=float, default=None, help="default: train.py's --eval-temperature")
    p.add_argument("--eval-top-p", type=float, default=None, help="default: train.py's --eval-top-p")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a train.py option for every arm, e.g. --set learning_rate=5e-5 (repeatable)")
    p.add_argument("--out", default="bench/results/vs_trl_paper_eval")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)       # child process: one arm, one seed
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    for arm in a.arms or []:
        if arm not in ARMS:
            p.error(f"--arms {arm!r}: not an arm; choose from " + " | ".join(repr(x) for x in ARMS))
    import train as T
    a.steps = a.steps or T.Config().steps
    a.n_eval = T.Config().n_eval if a.n_eval is None else a.n_eval
    a.eval_temperature = T.Config().eval_temperature if a.eval_temperature is None else a.eval_temperature
    a.eval_top_p = T.Config().eval_top_p if a.eval_top_p is None else a.eval_top_p
    protocol = [a.eval_temperature, a.eval_top_p]
    runs_dir = "/tmp/spo-vs-trl"
    if a.arm:                                # one arm in a fresh process: no state leaks between arms
        res = trl(a.seed, a, runs_dir, spo=a.arm == TRL_SPO) if a.arm in TRL_ARMS else ours(a.arm, a.seed, a, runs_dir)
        emit(res)
        return
    base = T.Config(**overrides(a.set))
    setting = {**{k: getattr(base, k) for k in SETTING}, "sft_steps": T.warmup_steps(base)}
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "runs.jsonl")

    def recorded() -> list:                  # this setting's and protocol's rows
        rows = [json.loads(x) for x in open(log)] if os.path.exists(log) else []
        return [r for r in rows if r["steps"] == a.steps and r.get("n_eval", 32) == a.n_eval
                and protocol_of(r) == protocol and setting_of(r) == setting]
    done = {(r["arm"], r["seed"]) for r in recorded()}
    child_args = ["--steps", a.steps, "--n-eval", a.n_eval, "--eval-every", a.eval_every, "--eval-temperature",
                  a.eval_temperature, "--eval-top-p", a.eval_top_p] + [x for kv in a.set for x in ("--set", kv)]
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for arm in a.arms or DEFAULT_ARMS:
            if (arm, seed) in done:
                print(f"{arm:18s} seed {seed}: recorded, skipped", flush=True)
                continue
            row = {"arm": arm, "seed": seed, "steps": a.steps, "n_eval": a.n_eval, "eval": protocol,
                   "setting": setting, **run_child(__file__, "--arm", arm, "--seed", seed, *child_args)}
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{arm:18s} seed {seed}: avg@4 {row['start']['eval/avg@4']:.3f} -> {row['end']['eval/avg@4']:.3f}  "
                  f"greedy {row['start']['eval/greedy']:.3f} -> {row['end']['eval/greedy']:.3f}  "
                  f"{row['s_per_step']:.1f} s/step", flush=True)
    rows = recorded()
    text = report(rows, a.steps, a.n_eval, protocol)
    print(text)
    with open(os.path.join(a.out, "vs_trl.md"), "w") as f:
        f.write(f"`python bench/vs_trl.py {shlex.join(sys.argv[1:])}`\n" + text)


def report(rows: list, steps: int, n_eval: int, protocol: list) -> str:
    get = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = [f"\n{steps} steps x 16 responses, held-out {n_eval} problems (avg@4 at T = {protocol[0]:g}, top-p "
           f"{protocol[1]:g} | greedy), per seed\n",
           "| arm | median start avg@4 / greedy | end avg@4 per seed | end greedy per seed | median end avg@4 / greedy "
           "| s/step |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        rs = [get[arm, s] for s in seeds if (arm, s) in get]
        if not rs:
            continue
        ea, eg = [r["end"]["eval/avg@4"] for r in rs], [r["end"]["eval/greedy"] for r in rs]
        out.append(f"| {arm} | {statistics.median(r['start']['eval/avg@4'] for r in rs):.3f} / "
                   f"{statistics.median(r['start']['eval/greedy'] for r in rs):.3f} | {' '.join(f'{x:.2f}' for x in ea)} "
                   f"| {' '.join(f'{x:.2f}' for x in eg)} | **{statistics.median(ea):.3f} / {statistics.median(eg):.3f}** "
                   f"| {statistics.median(r['s_per_step'] for r in rs):.1f} |")
    figs = [arm for arm in ARMS if any("var_ratio" in get[arm, s] for s in seeds if (arm, s) in get)]
    if figs:                                 # what the baseline did: medians over the seeds
        med = lambda arm, k: statistics.median(get[arm, s][k] for s in seeds if k in get.get((arm, s), {}))  # noqa
        out += ["\nthe baseline, median over the seeds: adv/raw_var / adv/noBaseline_var over the run (paper Fig. 3: "
                "~0.5); SPO: the tracker's Brier score vs the reward variance, second half; GRPO: the share of samples "
                "in groups whose rewards agree and the advantage variance of the live groups\n",
                "| arm | raw / no-baseline variance | Brier vs reward variance, 2nd half | degenerate share | "
                "live-group variance |", "|---|---|---|---|---|"]
        for arm in figs:
            spo = any("brier_2nd" in get.get((arm, s), {}) for s in seeds)
            grpo = any("degenerate" in get.get((arm, s), {}) for s in seeds)
            out.append(f"| {arm} | {med(arm, 'var_ratio'):.2f} | "
                       + (f"{med(arm, 'brier_2nd'):.3f} vs {med(arm, 'nobase_var_2nd'):.3f}" if spo else "—") + " | "
                       + (f"{med(arm, 'degenerate'):.2f} | {med(arm, 'live_var'):.3f}" if grpo else "— | —") + " |")
    curves = [arm for arm in ARMS if any(len(get[arm, s].get("curve", [])) > 2 for s in seeds if (arm, s) in get)]
    if curves:                               # --eval-every: the median held-out of each arm along the run
        at = sorted({c["step"] for r in rows for c in r.get("curve", [])})
        out += ["\nheld-out along the run, median over the seeds (avg@4 / greedy)\n",
                "| arm | " + " | ".join(f"step {x}" for x in at) + " |", "|---|" + "---|" * len(at)]
        for arm in curves:
            cell = []
            for x in at:
                e = [c for s in seeds if (arm, s) in get for c in get[arm, s].get("curve", []) if c["step"] == x]
                cell.append(f"{statistics.median(c['eval/avg@4'] for c in e):.3f} / "
                            f"{statistics.median(c['eval/greedy'] for c in e):.3f}" if e else "")
            out.append(f"| {arm} | " + " | ".join(cell) + " |")
    # each SPO arm against each peer, each ablation against the default: on one pool (one held-out set) only
    pairs = [(x, y) for x in [SPO_DEFAULT, *ABLATIONS, TRL_SPO] for y in [*PEERS, SPO_DEFAULT]
             if x != y and pool(x) == pool(y)]
    for spo, other in pairs:
        for key in ("eval/avg@4", "eval/greedy"):
            d = [get[spo, s]["end"][key] - get[other, s]["end"][key] for s in seeds
                 if (spo, s) in get and (other, s) in get]
            if d:
                se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
                out.append(f"\n{spo} - {other}, {key}, paired by seed: {statistics.mean(d):+.3f} +/- {se:.3f} (s.e., "
                           f"{len(d)} seeds; SPO ahead in {sum(x > 0 for x in d)}, tied in {sum(x == 0 for x in d)})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
