"""Train a policy with SPO (or GRPO, for comparison): one step readable top to bottom.

    python train.py                                   # embedded SmolLM2-135M + arithmetic, CPU, minutes
    python train.py --algo grpo --group-size 4        # the group baseline, everything else identical
    python train.py --model Qwen/Qwen3-8B --dataset dapo --load-in-4bit --engine vllm ...   (see README)
    python train.py --resume runs/spo                 # continue exactly where a run stopped
    python train.py --eval-only runs/spo/adapter      # held-out avg@k / pass@k / maj@k of a saved adapter

One SPO step (paper Alg. 1, in the order of the official code):
  1. draw B prompts with weights sqrt(v(1-v)) + eps from the tracker       (Eq. 11)   sampler.py
  2. generate ONE response per prompt                                                 rollout.py
  3. reward; A = r - v_hat_{-1}, normalised over the batch                  (Eq. 8-9)  spo.py
  4. old log-probs, PPO-clip mini-batch updates                              (Eq. 10)   spo.py
  5. drift D per prompt on its stored previous response, rho, tracker update (Eq. 5)    tracker.py
  6. adapter to the engine; metrics; checkpoint when due
Options live in config.py (one documented dataclass); torchrun plumbing in dist.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch

from config import Config, ConfigError, apply_profile, validate  # noqa: F401 (train.Config etc. for callers)
from data import RewardFn, chat_prompt, embedded_tasks, extract_answer, load_tasks, majority_correct, pass_at_k
from dist import Dist, state_hash
from rollout import LoraArgs, check_sync, load_policy, make_engine, sequence_logprobs
from sampler import PrioritizedSampler, priority_weights
from spo import degenerate_share, grpo_advantages, policy_drift, policy_loss, spo_advantages
from tracker import ValueTracker


# ============================================================== setup helpers


def load_data(cfg: Config, tok):
    """(train tasks, eval tasks, chat-formatted prompt per task), over-long prompts dropped and counted."""
    if cfg.dataset == "embedded":
        train, held = embedded_tasks(cfg.n_train, cfg.n_eval, seed=cfg.seed)
    else:
        train = load_tasks(cfg.dataset, cfg.prompt_field, cfg.answer_field)
        held = load_tasks(cfg.eval_dataset, cfg.prompt_field, cfg.answer_field, limit=cfg.n_eval) \
            if cfg.eval_dataset else []
    fmt = {}
    for t in train + held:
        fmt[t.prompt] = chat_prompt(tok, t.prompt, cfg.system_prompt, cfg.enable_thinking)
    too_long = {p for p, s in fmt.items() if len(tok(s, add_special_tokens=False)["input_ids"]) > cfg.max_prompt_length}
    if too_long:
        print(f"dropped {len(too_long)} prompt(s) longer than --max-prompt-length {cfg.max_prompt_length} tokens")
        train = [t for t in train if t.prompt not in too_long]
        held = [t for t in held if t.prompt not in too_long]
    prompts = cfg.batch_size // (cfg.group_size if cfg.algo == "grpo" else 1)
    if len(train) < prompts:
        raise ConfigError(f"{len(train)} training prompts, fewer than the {prompts} a step needs (--batch-size)")
    return train, held, fmt


def offline_init(cfg: Config, tracker: ValueTracker, engine, train, fmt, reward_fn, dist) -> None:
    """Eq. 6: n0 samples per prompt with the initial policy (each rank samples its share), or a saved file."""
    if cfg.offline_values:
        with open(cfg.offline_values) as f:
            table = json.load(f)
        keys = [t.prompt for t in train if t.prompt in table]
        missing = len(train) - len(keys)
        if not keys:
            raise ConfigError(f"--offline-values {cfg.offline_values}: none of its {len(table)} prompts is a "
                              "training prompt (keys must equal the prompt text exactly, suffix included)")
        if missing:
            dist.say(f"warning: {missing} of {len(train)} training prompts have no offline value "
                     f"(e.g. {next(t.prompt for t in train if t.prompt not in table)!r}); they start from the prior")
        tracker.init_from_offline(keys, [table[k] for k in keys])
        return
    if cfg.offline_samples == 0:
        return
    n0, table = cfg.offline_samples, {}
    mine = list(range(dist.rank, len(train), dist.world))
    chunk = max(1, 256 // n0)
    t0 = time.time()
    for s in range(0, len(mine), chunk):
        part = mine[s:s + chunk]
        seeds = [cfg.seed * 7919 + i * n0 + k for i in part for k in range(n0)]
        out = engine.generate([fmt[train[i].prompt] for i in part for _ in range(n0)], cfg.max_completion_length,
                              cfg.temperature, seed=cfg.seed * 7919 + s + dist.rank,
                              seeds=seeds if cfg.deterministic_generation or engine.name == "vllm" else None)
        for j, i in enumerate(part):
            table[train[i].prompt] = [reward_fn(o.text, train[i].answer) for o in out[j * n0:(j + 1) * n0]]
        done = min(s + chunk, len(mine))
        eta = (time.time() - t0) / done * (len(mine) - done)
        dist.say(f"offline init: {done * dist.world}/{len(train)} prompts x {n0} samples, ETA {eta:.0f} s")
    merged = {}
    for part in dist.gather(table):                                  # every rank: all prompts, in pool order
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


def evaluate(cfg: Config, engine, held, fmt) -> dict:
    """Held-out avg@k, pass@k (unbiased) and maj@k (paper App. D)."""
    if not held:
        return {}
    k, rf = cfg.eval_k, RewardFn()
    out = engine.generate([fmt[t.prompt] for t in held for _ in range(k)], cfg.max_completion_length,
                          cfg.eval_temperature, seed=10_007)
    avg = pas = maj = 0.0
    for j, t in enumerate(held):
        texts = [o.text for o in out[j * k:(j + 1) * k]]
        r = [rf(x, t.answer) for x in texts]
        avg += np.mean(r)
        pas += pass_at_k(k, int(sum(r)), k)
        maj += majority_correct([extract_answer(x) for x in texts], r)
    n = len(held)
    return {f"eval/avg@{k}": avg / n, f"eval/pass@{k}": pas / n, f"eval/maj@{k}": maj / n}


# ============================================================== checkpoints


def load_adapter(model, folder: str, lora_r: int) -> None:
    """LoRA weights saved by save_pretrained (a checkpoint, --eval-only, --init-adapter) into the policy."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    files = [os.path.join(folder, n) for n in ("adapter_config.json", "adapter_model.safetensors")]
    if not all(os.path.exists(f) for f in files):
        raise ConfigError(f"{folder}: not a LoRA adapter folder (needs adapter_config.json and adapter_model.safetensors)")
    with open(files[0]) as f:
        r = json.load(f).get("r")
    if r != lora_r:
        raise ConfigError(f"{folder}: adapter has LoRA rank {r}, but --lora-r is {lora_r}; pass --lora-r {r}")
    set_peft_model_state_dict(model, load_file(files[1]))


def save_checkpoint(cfg, step, model, opt, tracker, sampler, stored, history) -> None:
    """Atomically: write everything to ckpt.tmp, then swap it in with renames."""
    final, tmp, old = (os.path.join(cfg.output_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(os.path.join(tmp, "adapter"))
    torch.save({"step": step, "optimizer": opt.state_dict(), "tracker": tracker.state_dict(),
                "sampler": sampler.state_dict(), "stored": stored, "history": history,
                "config": dataclasses.asdict(cfg)}, os.path.join(tmp, "state.pt"))
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: str):
    for name in ("ckpt", "ckpt.old"):          # ckpt.old survives a kill between the two renames
        path = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(path, "state.pt")):
            return path, torch.load(os.path.join(path, "state.pt"), weights_only=False)
    raise ConfigError(f"--resume {run_dir}: no checkpoint in it (expected {run_dir}/ckpt/state.pt)")


# ============================================================== the training loop


def train(cfg: Config) -> dict:
    validate(cfg)
    dist = Dist(cfg.dist_timeout)
    if cfg.batch_size % dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must divide evenly over {dist.world} ranks")
    torch.manual_seed(cfg.seed)
    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, min((os.cpu_count() or 1) // local, 8)))
    os.makedirs(cfg.output_dir, exist_ok=True)
    state = None
    if cfg.resume:
        ckpt_dir, state = load_checkpoint(cfg.resume)
    model, tok, path = load_policy(cfg.model, LoraArgs(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
                                   cfg.load_in_4bit)
    adapter = os.path.join(ckpt_dir, "adapter") if state is not None else cfg.eval_only or cfg.init_adapter
    if adapter:
        load_adapter(model, adapter, cfg.lora_r)
    train_tasks, held, fmt = load_data(cfg, tok)
    engine = make_engine(cfg.engine, model, tok, path, max_prompt_length=cfg.max_prompt_length,
                         max_new_tokens=cfg.max_completion_length, lora_rank=cfg.lora_r, seed=cfg.seed + dist.rank,
                         gpu_memory_utilization=cfg.gpu_memory_utilization, load_in_4bit=cfg.load_in_4bit)
    if cfg.eval_only:
        res = evaluate(cfg, engine, held, fmt) if dist.main else {}
        dist.say(json.dumps(res))
        return res
    if dist.main:
        with open(os.path.join(cfg.output_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
    dist.say("config:", json.dumps(dataclasses.asdict(cfg)))

    reward_fn = RewardFn(cfg.format_gate)
    keys = [t.prompt for t in train_tasks]
    tracker = ValueTracker(cfg.rho_min, cfg.rho_max, cfg.d_half)
    sampler = PrioritizedSampler(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    stored = {}            # prompt -> (prompt_ids, completion_ids, log-probs after the update at its last visit)
    history, start = [], 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        tracker.load_state_dict(state["tracker"])
        sampler.load_state_dict(state["sampler"])
        stored, history, start = state["stored"], state["history"], state["step"]
        dist.say(f"resumed from {ckpt_dir} at step {start}")
    elif cfg.algo == "spo":
        offline_init(cfg, tracker, engine, train_tasks, fmt, reward_fn, dist)
    log = Logger(cfg, start) if dist.main else None
    if start == 0 and dist.main:
        log.eval(0, evaluate(cfg, engine, held, fmt))

    stop = {"signal": None}

    def on_signal(sig, _frame):              # first: finish the step, save, exit; second: exit now
        if stop["signal"]:
            raise KeyboardInterrupt(f"second {signal.Signals(sig).name}: stopping without saving")
        stop["signal"] = signal.Signals(sig).name
        dist.say(f"\n{stop['signal']}: finishing step, then saving a checkpoint (again to stop at once)")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    bad_steps = 0
    pad = tok.pad_token_id
    B = cfg.batch_size
    mine = list(range(dist.rank, B, dist.world))                       # this rank's rows of every batch
    for step in range(start + 1, cfg.steps + 1):
        t_step = t0 = time.time()
        m = {"step": step}
        # ---- 1. prompts: Eq. 11 weights from the tracker (SPO) or uniform (GRPO); same draw on every rank
        if cfg.algo == "spo" and not cfg.uniform_sampling:
            idx = sampler.sample(priority_weights(tracker.value(keys), cfg.sampling_epsilon), B)
        elif cfg.algo == "spo":
            idx = sampler.uniform(len(keys), B)
        else:
            idx = np.repeat(sampler.uniform(len(keys), B // cfg.group_size), cfg.group_size)
        batch = [train_tasks[i] for i in idx]
        bkeys = [t.prompt for t in batch]
        m["time/tracker"] = time.time() - t0                                 # tracker + sampler bookkeeping
        # ---- 2. generate one response per prompt (GRPO: each prompt group_size times), this rank's rows
        t0 = time.time()
        base_seed = cfg.seed * 1_000_003 + step * 10_007
        samples = engine.generate([fmt[bkeys[j]] for j in mine], cfg.max_completion_length, cfg.temperature,
                                  seed=base_seed + dist.rank, seeds=[base_seed + j for j in mine]
                                  if cfg.deterministic_generation or engine.name == "vllm" else None)
        m["time/generate"] = time.time() - t0
        engine.sleep()                       # vLLM on CUDA: free the KV cache, offload weights while training
        # ---- 3. rewards (gathered: the batch is global) and advantages
        local_r = [reward_fn(s.text, batch[j].answer) for s, j in zip(samples, mine)]
        rewards = np.array(dist.rows(local_r, B))
        v_prev = tracker.value(bkeys)                                        # v_hat_{-1}: before this reward
        if cfg.algo == "spo":
            base = np.zeros_like(v_prev) if cfg.no_baseline else v_prev
            adv = spo_advantages(rewards, base)                             # Eq. 8-9, over the global batch
            raw = rewards - base
        else:
            adv = grpo_advantages(rewards, cfg.group_size)
            raw = rewards - rewards.reshape(-1, cfg.group_size).mean(1).repeat(cfg.group_size)
            m["grpo/degenerate_share"] = degenerate_share(rewards, cfg.group_size)
        # ---- 4. old log-probs, then PPO-clip mini-batch updates (Eq. 10); gradients summed over ranks
        t0 = time.time()
        p_ids, c_ids = [s.prompt_ids for s in samples], [s.completion_ids for s in samples]
        model.train()
        with torch.no_grad():
            old_logp, mask = sequence_logprobs(model, p_ids, c_ids, pad, cfg.temperature, cfg.micro_batch_size)
        stats, skipped = [], 0
        mb = B // cfg.num_minibatches
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(step))
            for s in range(0, B, mb):
                rows = [j // dist.world for j in perm[s:s + mb].tolist() if j % dist.world == dist.rank]  # local
                if cfg.loss_variant == "gspo":
                    norm = float(min(mb, B - s))                              # sequences in the global mini-batch
                else:
                    norm = dist.sum(mask[rows].sum().reshape(1)).item()      # tokens in the global mini-batch
                total = torch.zeros(1)
                for u in range(0, len(rows), cfg.micro_batch_size):
                    r = rows[u:u + cfg.micro_batch_size]
                    logp, mk = sequence_logprobs(model, [p_ids[i] for i in r], [c_ids[i] for i in r], pad,
                                                 cfg.temperature, cfg.micro_batch_size)
                    loss, st = policy_loss(logp, old_logp[r, :logp.shape[1]], adv[[mine[i] for i in r]], mk,
                                           cfg.epsilon, cfg.epsilon_high, cfg.dual_clip, cfg.loss_variant,
                                           normalizer=norm)
                    loss.backward()
                    total += loss.item()
                    stats.append(st)
                dist.sum_grads(params)                                        # explicit all-reduce of LoRA grads
                total = dist.sum(total).item()
                if not math.isfinite(total):                                 # every rank sees the same sum
                    opt.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                opt.step()
                opt.zero_grad(set_to_none=True)
                m["loss"] = total
        m["time/train"] = time.time() - t0
        m["nonfinite_loss_updates"] = skipped
        bad_steps = bad_steps + 1 if skipped else 0
        if bad_steps >= cfg.max_bad_steps:
            if log:
                log.close()
            raise RuntimeError(f"stopping: {bad_steps} consecutive steps with a non-finite loss (step {step}); "
                               f"the last checkpoint is in {cfg.output_dir}/ckpt")
        # ---- 5. drift on each prompt's stored previous response, then the tracker (Eq. 5)
        t0 = time.time()
        if cfg.algo == "spo":
            prev = [stored.get(bkeys[j]) for j in mine]
            seen = [i for i, p in enumerate(prev) if p is not None]
            with torch.no_grad():                       # one pass: stored responses + this step's
                both_p = [prev[i][0] for i in seen] + p_ids
                both_c = [prev[i][1] for i in seen] + c_ids
                now, nmask = sequence_logprobs(model, both_p, both_c, pad, cfg.temperature, cfg.micro_batch_size)
            m["time/drift"] = time.time() - t0
            t0 = time.time()
            local_d = np.zeros(len(mine))
            if seen:
                then = torch.zeros(len(seen), now.shape[1])
                for k, i in enumerate(seen):
                    then[k, :len(prev[i][2])] = torch.tensor(prev[i][2])
                local_d[seen] = policy_drift(then, now[:len(seen)], nmask[:len(seen)]).numpy()
            new = [(p_ids[i], c_ids[i], now[len(seen) + i, :len(c_ids[i])].tolist()) for i in range(len(mine))]
            for j, entry in zip(range(B), dist.rows(new, B)):  # store for the next visit, on every rank
                stored[bkeys[j]] = entry
            drift = np.array(dist.rows(local_d.tolist(), B))
            first = np.array(dist.rows([p is None for p in prev], B))
            rho = tracker.update(bkeys, rewards, drift)
            m.update({"spo/rho_mean": float(rho.mean()), "spo/rho_min": float(rho.min()),
                      "spo/rho_max": float(rho.max()),
                      "spo/drift_mean": float(drift[~first].mean()) if (~first).any() else 0.0,
                      "spo/first_visit_share": float(first.mean()),
                      "spo/n_eff_mean": float(tracker.effective_size(bkeys).mean())})
        m["time/tracker"] += time.time() - t0
        if cfg.dist_check_every and dist.world > 1 and step % cfg.dist_check_every == 0:
            dist.check_same(state_hash(tracker, sampler, model), f"tracker/sampler/adapter state at step {step}")
        # ---- 6. adapter to the engine, sync self-test, metrics, checkpoint
        engine.wake_up()
        engine.load_adapter(model)
        if cfg.sync_check_every and engine.name != "hf" and (step == start + 1 or step % cfg.sync_check_every == 0):
            again = engine.generate([fmt[bkeys[j]] for j in mine[:4]], cfg.max_completion_length, cfg.temperature,
                                    seed=step)
            m.update({f"sync/{k}": v for k, v in check_sync(model, again, pad, cfg.temperature).items()})
        lens = np.array(dist.rows([len(c) for c in c_ids], B))
        truncated = dist.rows([s.finish_reason == "length" for s in samples], B)
        norm_adv = adv.numpy()
        m.update({
            "reward": float(rewards.mean()),
            "adv/raw_var": float(np.var(raw)),
            "adv/noBaseline_var": float(np.var(rewards)),
            "adv/near_zero_0.02": float(np.mean(np.abs(norm_adv) < 0.02)),
            "adv/near_zero_1e-4": float(np.mean(np.abs(norm_adv) < 1e-4)),
            "tracker/brier": float(np.mean((v_prev - rewards) ** 2)) if cfg.algo == "spo" else float("nan"),
            "response_length": float(lens.mean()),
            "truncation_rate": float(np.mean(truncated)),
            "tokens_per_s": float(lens.sum() / max(m["time/generate"], 1e-9)),
            "reward_errors": reward_fn.errors,
        })
        for name in ("clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean"):
            vals = [s[name] for s in stats if name in s]
            if vals:
                m[f"loss/{name}"] = float(np.mean(vals))
        m["time/step"] = time.time() - t_step
        history.append(m)
        stopping = dist.gather(stop["signal"])                          # stop together, whichever rank was told
        stop["signal"] = next((x for x in stopping if x), None)
        if dist.main:
            log.step(m, samples[0].text, rewards[0], batch[0])
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                log.eval(step, evaluate(cfg, engine, held, fmt))
            if (cfg.save_every and step % cfg.save_every == 0) or stop["signal"]:
                save_checkpoint(cfg, step, model, opt, tracker, sampler, stored, history)
        dist.barrier()
        if stop["signal"]:
            if log:
                log.close()
            dist.say(f"{stop['signal']}: saved a checkpoint at step {step}; continue with --resume {cfg.output_dir}")
            dist.close()
            return {"stopped": stop["signal"], "step": step}

    final = evaluate(cfg, engine, held, fmt) if dist.main else {}
    if dist.main:
        log.eval(cfg.steps, final)
        save_checkpoint(cfg, cfg.steps, model, opt, tracker, sampler, stored, history)
        model.save_pretrained(os.path.join(cfg.output_dir, "adapter"))
        log.close()
        plot(cfg.output_dir, history, log.evals)
    dist.barrier()
    dist.close()
    first = log.evals[0][1] if log and log.evals else {}
    for k in final:
        print(f"held-out {k}: {first.get(k, float('nan')):.3f} -> {final[k]:.3f}")
    if dist.main:
        print(f"adapter: {cfg.output_dir}/adapter   curves: {cfg.output_dir}/curves.png")
    return {"first_eval": first, "final_eval": final, "history": history}


# ============================================================== logging


class Logger:
    """metrics.jsonl always; a rich live dashboard on a terminal, plain lines otherwise."""

    def __init__(self, cfg: Config, start: int):
        self.cfg, self.evals = cfg, []
        path = os.path.join(cfg.output_dir, "metrics.jsonl")
        if start and os.path.exists(path):   # resuming: drop lines logged after the checkpoint
            with open(path) as f:
                keep = [line for line in f if json.loads(line)["step"] <= start]
            with open(path, "w") as f:
                f.writelines(keep)
        self.file = open(path, "a" if start else "w")    # a fresh run (--overwrite) starts a fresh log
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=cfg.steps, completed=start)
            self.live = Live(self.progress, refresh_per_second=4)
            self.live.start()

    def step(self, m: dict, text: str, reward: float, task) -> None:
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        line = (f"step {m['step']:>4}  reward {m['reward']:.3f}  loss {m.get('loss', float('nan')):+.4f}  "
                f"rho {m.get('spo/rho_mean', float('nan')):.3f}  brier {m['tracker/brier']:.3f}  "
                f"len {m['response_length']:.0f}  {m['tokens_per_s']:.0f} tok/s  {m['time/step']:.1f} s")
        if self.live is None:
            print(line, flush=True)
            return
        from rich.console import Group
        from rich.panel import Panel
        self.progress.update(self.task, completed=m["step"])
        ev = "  ".join(f"{k} {v:.3f}" for k, v in (self.evals[-1][1].items() if self.evals else []))
        sample = Panel(f"[bold]{task.prompt}[/] (answer {task.answer}) -> reward {reward:.0f}\n{text[:300]}",
                       title="sample")
        self.live.update(Group(self.progress, line, ev, sample))

    def eval(self, step: int, res: dict) -> None:
        if not res:
            return
        self.evals.append((step, res))
        self.file.write(json.dumps({"step": step, **res}) + "\n")
        self.file.flush()
        print(f"eval @ step {step}: " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.file.close()


def plot(out_dir: str, history: list, evals: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    steps = [m["step"] for m in history]
    ax[0].plot(steps, [m["reward"] for m in history], label="train reward")
    for k in (evals[0][1] if evals else {}):
        ax[0].plot([s for s, _ in evals], [e[k] for _, e in evals], "o-", label=k)
    ax[0].set_title("reward / held-out accuracy")
    ax[0].legend()
    ax[1].plot(steps, [m["adv/raw_var"] for m in history], label="advantage variance")
    ax[1].plot(steps, [m["adv/noBaseline_var"] for m in history], label="no-baseline variance")
    ax[1].set_title("unnormalised advantage variance")
    ax[1].legend()
    ax[2].plot(steps, [m["tracker/brier"] for m in history])
    ax[2].set_title("tracker Brier score (v_hat_-1 vs r)")
    for a in ax:
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    import tyro
    argv = sys.argv[1:] if argv is None else argv
    cfg = tyro.cli(Config, args=argv, description=__doc__.split("\n")[0])
    try:
        train(apply_profile(cfg, argv))
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
