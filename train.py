"""Train a policy with SPO (or GRPO, for comparison) on verifiable rewards.

The setup, the offline init and the loop around `trainer.Trainer.step`, where one step reads as named phases.

    python train.py                                   # embedded SmolLM2-135M + arithmetic, CPU, minutes
    python train.py --algo grpo --group-size 4        # the group baseline, everything else identical
    python train.py --model Qwen/Qwen3-8B             # the paper's setting on a GPU (docs/gpu.md)
    python train.py --resume runs/spo                 # continue exactly where a run stopped
    python train.py --eval-only runs/spo/adapter      # held-out avg@k / pass@k / maj@k of a saved adapter

Options: config.py (`python train.py --help`). torchrun: dist.py. What a run writes: run_dir.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

from config import Config, ConfigError, apply_profile, learning_rate_at, validate, warmup_steps  # noqa: F401
from data import DataError, format_tasks, read_tasks
from dist import Dist
from extensions.sandbox import SandboxUnavailable, check_server, isolation
from extensions.tools import ToolEngine
from models import LoraArgs, SetupError, load_policy
from rewards import evaluate
from rollout import make_engine, request_seeds
from run_dir import GracefulStop, Logger, load_adapter, load_checkpoint, plot, save_checkpoint
from trainer import Trainer

# ============================================================== setup


def load_model_and_engine(cfg: Config, dist: Dist, adapter: str | None):
    """The policy (LoRA, or QLoRA on a 4-bit base), with a saved adapter loaded if given, and its engine."""
    model, tok, path = load_policy(cfg.model, LoraArgs(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
                                   cfg.load_in_4bit)
    if adapter:
        load_adapter(model, adapter, cfg.lora_r)
    # continuous collection: a trajectory keeps the adapter it started with, so the engine holds several
    adapters = cfg.max_staleness // (cfg.num_minibatches * cfg.ppo_epochs) + 2 if cfg.collect == "continuous" else 1
    engine = make_engine(cfg.engine, model, tok, path, max_prompt_length=cfg.max_prompt_length,
                         max_new_tokens=cfg.max_completion_length, lora_rank=cfg.lora_r, seed=cfg.seed + dist.rank,
                         gpu_memory_utilization=cfg.gpu_memory_utilization, load_in_4bit=cfg.load_in_4bit,
                         max_loras=adapters)
    if cfg.tools == "python":            # responses call the Python tool (extensions/tools.py, sandbox.py)
        engine = ToolEngine(engine, tok, cfg.max_tool_turns, cfg.max_tool_response_length, cfg.tool_timeout,
                            cfg.sandbox_workers, cfg.sandbox_url)
    return model, tok, engine


def offline_init(tr: Trainer) -> None:
    """Eq. 6, before the first step: n0 samples per prompt with the initial policy (each rank samples its share)
    into the tracker's counts, or a file saved by an earlier run."""
    cfg, dist, train, tracker = tr.cfg, tr.dist, tr.train_tasks, tr.tracker
    if cfg.offline_values:
        with open(cfg.offline_values) as f:
            table = json.load(f)
        keys = [t.prompt for t in train if t.prompt in table]
        if not keys:
            raise ConfigError(f"--offline-values {cfg.offline_values}: none of its {len(table)} prompts is a "
                              "training prompt (keys must equal the prompt text exactly, suffix included)")
        if len(keys) < len(train):
            dist.say(f"warning: {len(train) - len(keys)} of {len(train)} training prompts have no offline value "
                     f"(e.g. {next(t.prompt for t in train if t.prompt not in table)!r}); they start from the prior")
        tracker.init_from_offline(keys, [table[k] for k in keys])
        return
    if cfg.offline_samples == 0:
        return
    n0, table, t0 = cfg.offline_samples, {}, time.time()
    mine = list(range(dist.rank, len(train), dist.world))
    chunk = max(1, 256 // n0)
    for s in range(0, len(mine), chunk):
        part = mine[s:s + chunk]
        seeds = [cfg.seed * 7919 + i * n0 + k for i in part for k in range(n0)]
        out = tr.engine.generate([tr.fmt[train[i].prompt] for i in part for _ in range(n0)],
                                   cfg.max_completion_length, cfg.temperature, seed=cfg.seed * 7919 + s + dist.rank,
                                   seeds=request_seeds(tr.engine, cfg.deterministic_generation, seeds))
        for j, i in enumerate(part):
            table[train[i].prompt] = [tr.reward_fn(o.text, train[i].answer) for o in out[j * n0:(j + 1) * n0]]
        done = min(s + chunk, len(mine))
        eta = (time.time() - t0) / done * (len(mine) - done)
        dist.say(f"offline init: {done * dist.world}/{len(train)} prompts x {n0} samples, ETA {eta:.0f} s")
    merged = {}
    for part in dist.gather(table):                              # every rank: all prompts, in pool order
        merged.update(part)
    table = {t.prompt: merged[t.prompt] for t in train}
    path = os.path.join(cfg.output_dir, "offline_values.json")
    if dist.main:
        with open(path, "w") as f:
            json.dump(table, f)
    rates = np.array([np.mean(v) for v in table.values()])
    dist.say(f"offline values -> {path} (reuse with --offline-values): mean success {rates.mean():.3f}, "
             f"{np.mean((rates > 0) & (rates < 1)):.0%} of prompts strictly between 0 and 1")
    tracker.init_from_offline(list(table), list(table.values()))


def describe(cfg: Config, train_tasks: list, held: list, world: int) -> str:
    """What the run is, in a few lines (the whole resolved config goes to --output-dir/config.json)."""
    algo = {"spo": "SPO", "grpo": f"GRPO ({cfg.group_size} responses a prompt)", "segment": f"Segment-PO ({cfg.segment_partition})"}[cfg.algo]
    extras = [x for x, on in (("tools: python", cfg.tools == "python"), ("continuous collection", cfg.collect ==
              "continuous"), ("QLoRA", cfg.load_in_4bit), (f"{world} ranks", world > 1)) if on]
    return (f"{algo} on {cfg.model}, {cfg.steps} steps x {cfg.batch_size} responses, engine {cfg.engine}"
            f"{', ' + ', '.join(extras) if extras else ''}\n"
            f"data: {cfg.dataset}, {len(train_tasks)} training prompts, {len(held)} held-out"
            f"{' (' + cfg.eval_dataset + ')' if cfg.eval_dataset else ''}; profile {cfg.profile}\n"
            f"output: {cfg.output_dir} (config.json, metrics.jsonl, ckpt/, adapter/, curves.png)")


def trainer_class(cfg: Config) -> type:
    """The Trainer, or the extension's subclass that overrides the phases it changes."""
    if cfg.collect == "continuous":
        from extensions.continuous import ContinuousTrainer
        return ContinuousTrainer
    if cfg.algo == "segment":
        from extensions.segment_po import SegmentTrainer, TreeTrainer
        return TreeTrainer if cfg.segment_partition == "tree" else SegmentTrainer
    return Trainer


# ============================================================== the training loop


def train(cfg: Config) -> dict:
    """Check everything, load the model and the data, restore or initialise the trainer, then `loop`."""
    validate(cfg)
    tasks = read_tasks(cfg)                  # bad data stops here, before any model loads or file is written
    dist = Dist(cfg.dist_timeout)
    if cfg.tools == "python":                # an unreachable sandbox server stops here too
        if cfg.sandbox_url:
            check_server(cfg.sandbox_url)
        else:
            dist.say(f"sandbox: local processes, protected by {', '.join(isolation())} (docs/tools.md)")
    if cfg.batch_size % dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must divide evenly over {dist.world} ranks")
    dist.say(describe(cfg, *tasks, dist.world))
    torch.manual_seed(cfg.seed)
    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, min((os.cpu_count() or 1) // local, 8)))
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_dir, state = load_checkpoint(cfg.resume) if cfg.resume else (None, None)
    adapter = os.path.join(ckpt_dir, "adapter") if state is not None else cfg.eval_only or cfg.init_adapter
    model, tok, engine = load_model_and_engine(cfg, dist, adapter)
    train_tasks, held, fmt = format_tasks(cfg, tok, *tasks)
    if cfg.eval_only:
        res = evaluate(cfg, engine, held, fmt) if dist.main else {}
        dist.say(json.dumps(res))
        return res
    if dist.main:
        with open(os.path.join(cfg.output_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)

    tr = trainer_class(cfg)(cfg, dist, model, tok, engine, train_tasks, held, fmt)
    if state is not None:
        tr.load_state_dict(state)
        dist.say(f"resumed from {ckpt_dir} at step {tr.start}")
    else:
        if warmup_steps(cfg):
            from extensions.sft import format_warmup
            format_warmup(tr)                # the answer format first, so RL works on correctness per prompt
        if cfg.algo == "spo":
            offline_init(tr)
    log = Logger(cfg, tr.start, cfg.resume) if dist.main else None
    if tr.start == 0 and dist.main:
        log.eval(0, evaluate(cfg, engine, held, fmt))
    return loop(cfg, dist, tr, log, lambda: evaluate(cfg, engine, held, fmt))


def loop(cfg: Config, dist: Dist, tr: Trainer, log, held_out) -> dict:
    """Step, log, evaluate (`held_out()`) and checkpoint when due; stop cleanly on SIGINT/SIGTERM."""
    stop = GracefulStop(dist.say)
    for step in range(tr.start + 1, cfg.steps + 1):
        t_step = time.time()
        try:
            m, batch = tr.step(step)
        except RuntimeError:
            if log:
                log.close()
            raise
        m["time/step"] = time.time() - t_step
        stop.signal = next((x for x in dist.gather(stop.signal) if x), None)  # together, whichever rank was told
        if dist.main:
            log.step(m, *tr.shown(batch))
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                log.eval(step, held_out())
            if (cfg.save_every and step % cfg.save_every == 0) or stop.signal:
                save_checkpoint(cfg, step, tr)
        dist.barrier()
        if stop.signal:
            if log:
                log.close()
            dist.say(f"{stop.signal}: saved a checkpoint at step {step}{tr.close()}; "
                     f"continue with --resume {cfg.output_dir}")
            dist.close()
            return {"stopped": stop.signal, "step": step}
        if cfg.token_budget and sum(h.get("tokens/generated", 0) for h in tr.history) >= cfg.token_budget:
            dist.say(f"--token-budget {cfg.token_budget} reached at step {step}")
            break
    lost = tr.close()
    if lost:
        dist.say(f"end of training{lost}")
    return finish(cfg, dist, tr, log, held_out)


def finish(cfg: Config, dist: Dist, tr: Trainer, log, final_eval) -> dict:
    """The end of a run: final held-out evaluation, checkpoint, adapter, curves, and the summary lines."""
    final = final_eval() if dist.main else {}
    if dist.main:
        log.eval(len(tr.history), final)
        save_checkpoint(cfg, len(tr.history), tr)
        tr.model.save_pretrained(os.path.join(cfg.output_dir, "adapter"))
        log.close()
        plot(cfg.output_dir, tr.history, log.evals)
    dist.barrier()
    dist.close()
    first = log.evals[0][1] if log and log.evals else {}
    for k in final:
        print(f"held-out {k}: {first.get(k, float('nan')):.3f} -> {final[k]:.3f}")
    if dist.main:
        print(f"adapter: {cfg.output_dir}/adapter   curves: {cfg.output_dir}/curves.png")
    return {"first_eval": first, "final_eval": final, "history": tr.history,
            "evals": [{"step": step, **ev} for step, ev in log.evals] if log else []}   # the whole run's, from step 0


def main(argv=None) -> None:
    import tyro
    argv = sys.argv[1:] if argv is None else argv
    cfg = tyro.cli(Config, args=argv, description=__doc__.split("\n")[0])
    try:
        train(apply_profile(cfg, argv, say=print if os.environ.get("RANK", "0") == "0" else None))
    except (ConfigError, DataError, SandboxUnavailable, SetupError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
