"""Train a policy with SPO (or GRPO, for comparison): one step readable top to bottom.

    python train.py                                   # embedded SmolLM2-135M + arithmetic, CPU, minutes
    python train.py --algo grpo --group-size 4        # the group baseline, everything else identical
    python train.py --algo segment                    # Segment Policy Optimization, the other "SPO" (segment.py)
    python train.py --dataset embedded-tools --tools python --init-adapter runs/tools-sft/adapter ...  # tools (README)
    python train.py --model Qwen/Qwen3-8B --dataset dapo --load-in-4bit --engine vllm ...   (see README)
    python train.py --resume runs/spo                 # continue exactly where a run stopped
    python train.py --eval-only runs/spo/adapter      # held-out avg@k / pass@k / maj@k of a saved adapter

One SPO step (paper Alg. 1, in the order of the official code) is `Trainer.step`, a phase a method:
  1. draw         B prompts with weights sqrt(v(1-v)) + eps from the tracker      (Eq. 11)   sampler.py
  2. collect      ONE response per prompt                                                    rollout.py
  3. advantages   reward; A = r - v_hat_{-1}, normalised over the batch           (Eq. 8-9)  spo.py
                  (GRPO: the group mean; Segment-PO: per-segment Monte Carlo values, [B, T])  segment.py
  4. update       old log-probs, PPO-clip mini-batch updates                      (Eq. 10)   spo.py
  5. track        drift D per prompt on its stored previous response, rho, tracker update (Eq. 5) tracker.py
                  (--drift-at sampling: D is measured before the update, in one smaller pass)
  6. sync_engine  adapter to the engine (and the engine-vs-trainer check); then metrics, checkpoint
Options live in config.py (one documented dataclass), torchrun plumbing in dist.py, what a run writes
(metrics, dashboard, checkpoints) in run_dir.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from config import Config, ConfigError, apply_profile, validate  # noqa: F401 (train.Config etc. for callers)
from data import DataError, RewardFn, evaluate, format_tasks, read_tasks
from dist import Dist, state_hash
from run_dir import GracefulStop, Logger, load_adapter, load_checkpoint, plot, save_checkpoint
from rollout import (LoraArgs, check_sync, compare_logprobs, load_policy, make_engine, pad_logprobs, policy_mask,
                     sequence_logprobs)
from sampler import PrioritizedSampler, priority_weights
from collector import ContinuousCollector
from sandbox import SandboxUnavailable, check_server, isolation
from segment import cutpoint_bounds, cutpoints, fixed_bounds, segment_batch
from spo import degenerate_share, grpo_advantages, policy_drift, policy_loss, spo_advantages, tis_weights
from tools import ToolEngine, tool_metrics
from tracker import ValueTracker


# ============================================================== setup helpers


def load_model_and_engine(cfg: Config, dist: Dist, adapter: str | None):
    """The policy (LoRA, or QLoRA on a 4-bit base), with a saved adapter loaded if given, and its engine."""
    model, tok, path = load_policy(cfg.model, LoraArgs(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
                                   cfg.load_in_4bit)
    if adapter:
        load_adapter(model, adapter, cfg.lora_r)
    engine = make_engine(cfg.engine, model, tok, path, max_prompt_length=cfg.max_prompt_length,
                         max_new_tokens=cfg.max_completion_length, lora_rank=cfg.lora_r, seed=cfg.seed + dist.rank,
                         gpu_memory_utilization=cfg.gpu_memory_utilization, load_in_4bit=cfg.load_in_4bit,
                         **(dict(max_loras=cfg.max_staleness // (cfg.num_minibatches * cfg.ppo_epochs) + 2)
                            if cfg.collect == "continuous" else {}))   # carried trajectories keep their adapter
    if cfg.tools == "python":            # responses call the Python tool (tools.py, sandbox.py)
        engine = ToolEngine(engine, tok, cfg.max_tool_turns, cfg.max_tool_response_length, cfg.tool_timeout,
                            cfg.sandbox_workers, cfg.sandbox_url)
    return model, tok, engine


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


# ============================================================== one step, as named phases


def learning_rate_at(cfg: Config, step: int) -> float:
    """--lr-scheduler-type: the rate of training step `step` (1-based) of --steps. 'constant' is the paper's
    (spec §2); 'linear' and 'cosine' decay towards 0 as transformers' schedulers of those names
    do, here per training step (the step's optimizer updates share its rate)."""
    frac = (step - 1) / max(cfg.steps, 1)               # 0 at the first step, 1 - 1/steps at the last
    if cfg.lr_scheduler_type == "linear":
        return cfg.learning_rate * (1 - frac)
    if cfg.lr_scheduler_type == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.learning_rate


@dataclass
class Batch:
    """What one step carries from phase to phase. Rows are global (B) unless marked "this rank's"."""
    tasks: list                          # [B] Task
    keys: list                           # [B] prompt texts, the tracker's keys
    samples: list = None                 # this rank's responses (rows `mine` of the batch)
    rewards: np.ndarray = None           # [B] r in {0, 1}
    v_prev: np.ndarray = None            # [B] v_hat_{-1}: tracker values before this step's rewards (SPO)
    adv: torch.Tensor = None             # [B] normalised advantages (Eq. 9)
    raw: np.ndarray = None               # [B] unnormalised advantages r - baseline
    carry: torch.Tensor = None           # [B, T] tokens that carry an advantage (segment: per-token advantages)
    staleness: np.ndarray = None         # [B] optimizer steps since each response's adapter (continuous collection)
    drift: np.ndarray = None             # [B] D since each prompt's last visit (SPO; 0 on a first visit)
    first: np.ndarray = None             # [B] True on a prompt's first visit
    old_logp: torch.Tensor = None        # this rank's [b, T] pi_old, when the drift pass already scored it


class Trainer:
    """The run's state in one place (policy, engine, tracker, sampler, optimizer, stored responses,
    history) and one training step as named phases, read top to bottom in `step`:

        draw -> collect -> advantages -> (drift) -> update -> (drift) -> track -> sync_engine -> summarise

    `drift` runs before `update` or after it, as --drift-at says (the policies D compares).

    A new collector replaces `collect`, a new estimator `advantages`; the other phases stay as they are.
    """

    def __init__(self, cfg: Config, dist: Dist, model, tok, engine, train_tasks, held, fmt):
        self.cfg, self.dist, self.model, self.tok, self.engine = cfg, dist, model, tok, engine
        self.train_tasks, self.held, self.fmt = train_tasks, held, fmt
        self.keys = [t.prompt for t in train_tasks]
        self.reward_fn = RewardFn(cfg.format_gate)
        self.tracker = ValueTracker(cfg.rho_min, cfg.rho_max, cfg.d_half)
        self.sampler = PrioritizedSampler(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.stored = {}       # prompt -> (prompt_ids, completion_ids, log-probs after the update at its last visit)
        self.history = []      # one metrics dict per step
        self.mine = list(range(dist.rank, cfg.batch_size, dist.world))   # this rank's rows of every batch
        self.bad_steps = 0     # consecutive steps with a skipped (non-finite) update
        self.start = 0         # the step a resumed run continues after
        self.opt_steps = 0     # optimizer steps taken (the staleness clock of continuous collection)
        self.collector = None  # continuous collection (collector.py): trajectories in flight across steps
        if cfg.collect == "continuous":
            if engine.name != "vllm" or dist.world > 1:
                raise ConfigError("--collect continuous needs --engine vllm in a single process")
            self.collector = ContinuousCollector(
                engine, [tok(fmt[k], add_special_tokens=False)["input_ids"] for k in self.keys],
                cfg.max_completion_length, cfg.temperature, cfg.batch_size, cfg.oversample,
                cfg.group_size if cfg.algo == "grpo" else 1, cfg.max_staleness, cfg.seed,
                tools=engine if cfg.tools == "python" else None,
                score=lambda i, s: self.reward_fn(s.text, train_tasks[i].answer))

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "tracker": self.tracker.state_dict(),
                "sampler": self.sampler.state_dict(), "stored": self.stored, "history": self.history,
                "opt_steps": self.opt_steps, **({"collector": self.collector.state_dict()} if self.collector else {})}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.sampler.load_state_dict(state["sampler"])
        self.history, self.start = state["history"], state["step"]
        # stored: key -> (prompt ids, response ids, scores, sampled-token mask or None); older checkpoints have no mask
        self.stored = {k: (*v, None)[:4] for k, v in state["stored"].items()}
        self.opt_steps = state.get("opt_steps", 0)
        if self.collector and "collector" in state:
            lost = self.collector.load_state_dict(state["collector"])
            self.dist.say(f"continuous collection: {sum(len(g) for g in self.collector.ready)} landed trajectories "
                          f"restored; {lost} were in flight at the checkpoint and are lost (not resumed)")

    def step(self, step: int) -> tuple[dict, Batch]:
        m = {"step": step}
        batch = self.draw(m)                 # 1. prompts (Eq. 11)
        self.collect(batch, step, m)         # 2. one response per prompt
        self.advantages(batch, m)            # 3. rewards, A = r - v_hat_{-1}, normalised (Eq. 8-9)
        if self.cfg.drift_at == "sampling":
            self.drift(batch, m)             # 5a. drift D since each prompt's last visit, between sampling policies
        self.update(batch, step, m)          # 4. PPO-clip mini-batch updates (Eq. 10)
        if self.cfg.drift_at == "update":
            self.drift(batch, m)             # 5a. ... or between post-update policies (official code)
        self.track(batch, m)                 # 5. rho from D, tracker update (Eq. 5)
        self.sync_engine(batch, step, m)     # 6. adapter to the engine, sync self-test
        self.summarise(batch, m)
        self.history.append(m)
        return m, batch

    # ---- 1. prompts: Eq. 11 weights from the tracker (SPO) or uniform (GRPO); same draw on every rank
    def draw(self, m: dict) -> Batch:
        cfg, t0 = self.cfg, time.time()
        if self.collector is not None:       # continuous: the collector draws (self.choose) as trajectories land
            m["time/tracker"] = 0.0
            return Batch([], [])
        G = cfg.group_size if cfg.algo == "grpo" else 1
        idx = np.repeat(self.choose(cfg.batch_size // G), G)
        m["time/tracker"] = time.time() - t0                                 # tracker + sampler bookkeeping
        self.curriculum(idx, m)
        tasks = [self.train_tasks[i] for i in idx]
        return Batch(tasks, [t.prompt for t in tasks])

    def choose(self, n: int, busy: set = frozenset()) -> np.ndarray:
        """n distinct prompt indices, none in `busy` (in flight): Eq. 11 weights (SPO) or a shuffled epoch."""
        if self.cfg.algo == "spo" and not self.cfg.uniform_sampling:
            free = np.array([i for i in range(len(self.keys)) if i not in busy])
            v = self.tracker.value([self.keys[i] for i in free])             # [M_free] v_hat
            return free[self.sampler.sample(priority_weights(v, self.cfg.sampling_epsilon), min(n, len(free)))]
        n = min(n, len(self.keys) - len(busy))                              # busy: in-flight indices of the pool
        return self.sampler.shuffled(len(self.keys), n, exclude=busy)       # GRPO, --uniform-sampling, segment

    def curriculum(self, idx, m: dict) -> None:
        """The curriculum at work (SPO): share of uncertain prompts (0.2 < v_hat < 0.8), batch vs pool."""
        if self.cfg.algo == "spo":
            v = self.tracker.value(self.keys)
            uncertain = (v > 0.2) & (v < 0.8)
            m["sampler/uncertain_batch"] = float(uncertain[np.asarray(idx)].mean())
            m["sampler/uncertain_pool"] = float(uncertain.mean())

    # ---- 2. generate one response per prompt (GRPO: each prompt group_size times), this rank's rows
    def collect(self, batch: Batch, step: int, m: dict) -> None:
        cfg, t0 = self.cfg, time.time()
        if self.collector is not None:
            return self.collect_continuous(batch, m)
        base_seed = cfg.seed * 1_000_003 + step * 10_007
        batch.samples = self.engine.generate(
            [self.fmt[batch.keys[j]] for j in self.mine], cfg.max_completion_length, cfg.temperature,
            seed=base_seed + self.dist.rank, seeds=[base_seed + j for j in self.mine]
            if cfg.deterministic_generation or self.engine.name == "vllm" else None)
        m["time/generate"] = time.time() - t0
        m["tokens/generated"] = sum(self.dist.rows([len(s.completion_ids) for s in batch.samples], cfg.batch_size))
        self.engine.sleep()                  # vLLM on CUDA: free the KV cache, offload weights while training

    # ---- 2'. continuous: the first B trajectories to land (collector.py); the rest stay in flight
    def collect_continuous(self, batch: Batch, m: dict) -> None:
        t0, c = time.time(), self.collector
        trajs = c.collect(self.choose)
        batch.tasks = [self.train_tasks[t.idx] for t in trajs]
        batch.keys = [t.prompt for t in batch.tasks]
        batch.samples = [t.sample for t in trajs]
        batch.staleness = np.array([self.opt_steps - t.opt_step for t in trajs])
        self.curriculum([t.idx for t in trajs], m)
        m.update({"time/generate": time.time() - t0,
                  "tokens/generated": sum(len(s.completion_ids) for s in batch.samples),
                  "collect/in_flight": c.in_flight(), "collect/carried": sum(len(g) for g in c.ready),
                  "collect/dropped_stale": c.n_dropped, "collect/launched": c.n_launched,
                  "collect/staleness_mean": float(batch.staleness.mean()),
                  "collect/staleness_max": int(batch.staleness.max()),
                  "collect/stale_share": float((batch.staleness > 0).mean()),
                  **c.lengths(trajs)})

    # ---- 3. rewards (gathered: the batch is global) and advantages
    def advantages(self, batch: Batch, m: dict) -> None:
        cfg = self.cfg
        local_r = [self.reward_fn(s.text, batch.tasks[j].answer) for s, j in zip(batch.samples, self.mine)]
        r = batch.rewards = np.array(self.dist.rows(local_r, cfg.batch_size))
        batch.v_prev = self.tracker.value(batch.keys)                        # v_hat_{-1}: before this reward
        if cfg.algo == "spo":
            base = np.zeros_like(batch.v_prev) if cfg.no_baseline else batch.v_prev
            batch.adv = spo_advantages(r, base,                              # Eq. 8-9, over the global batch
                                       zero_if_rewards_agree=cfg.zero_if_rewards_agree)
            batch.raw = r - base
        elif cfg.algo == "segment":
            self.segment_advantages(batch, local_r, m)
        else:
            G = cfg.group_size
            batch.adv = grpo_advantages(r, G)
            batch.raw = r - r.reshape(-1, G).mean(1).repeat(G)
            m["grpo/degenerate_share"] = degenerate_share(r, G)

    # ---- 3'. Segment-PO (segment.py): segments, V at each boundary by Monte Carlo, chain advantages
    def segment_advantages(self, batch: Batch, local_r: list, m: dict) -> None:
        cfg, N, samples, t0 = self.cfg, self.cfg.mc_rollouts, batch.samples, time.time()
        bounds = [cutpoint_bounds(torch.tensor(s.logprobs), cfg.cutpoint_threshold, cfg.segment_interval)
                  if cfg.segment_partition == "cutpoint" else fixed_bounds(len(s.completion_ids), cfg.segment_size)
                  for s in samples]
        starts = [(i, b) for i, bs in enumerate(bounds) for b in bs[:-1]]      # V is wanted at these prefixes
        seed = cfg.seed * 1_000_003 + len(self.history) * 10_007 + 7_777_777
        cont = self.engine.generate_ids(                                     # all continuations in one call
            [samples[i].prompt_ids + samples[i].completion_ids[:b] for i, b in starts for _ in range(N)],
            [cfg.max_completion_length - b for i, b in starts for _ in range(N)], cfg.temperature, seed=seed,
            seeds=[seed + k for k in range(len(starts) * N)]
            if cfg.deterministic_generation or self.engine.name == "vllm" else None)
        values = [[] for _ in samples]                                       # V_0 (prompt), V_1 .., then r
        for k, (i, b) in enumerate(starts):
            gold = batch.tasks[self.mine[i]].answer
            rs = [self.reward_fn(self.tok.decode(samples[i].completion_ids[:b] + c.completion_ids,
                                                 skip_special_tokens=True), gold) for c in cont[k * N:(k + 1) * N]]
            values[i].append(sum(rs) / N)
        for i, r in enumerate(local_r):
            values[i].append(r)
        B, rows = cfg.batch_size, self.dist.rows
        all_bounds, all_values = rows(bounds, B), rows(values, B)
        logps = [torch.tensor(x) for x in rows([s.logprobs for s in samples], B)]
        width = max(max(len(x) for x in logps), 1)
        threshold = None if cfg.segment_all_tokens else cfg.cutpoint_threshold
        batch.adv, batch.carry = segment_batch(all_bounds, all_values, logps, threshold, width)   # [B, T] each
        batch.raw = np.array([v[-1] - v[0] for v in all_values])            # r - V(prompt): the chain's sum
        mc = [v for vs in all_values for v in vs[:-1]]
        m.update({"segment/segments": float(np.mean([len(b) - 1 for b in all_bounds])),
                  "segment/cutpoints": float(np.mean([len(cutpoints(lp, cfg.cutpoint_threshold)) for lp in logps])),
                  "segment/carry_share": float(batch.carry.sum() / max(sum(len(x) for x in logps), 1)),
                  "segment/mc_samples": len(mc) * N, "segment/v_std": float(np.std(mc)),
                  "time/mc": time.time() - t0})
        m["tokens/generated"] += sum(rows([sum(len(c.completion_ids) for c in cont)], self.dist.world))

    # ---- 4. old log-probs, then PPO-clip mini-batch updates (Eq. 10); gradients summed over ranks
    def update(self, batch: Batch, step: int, m: dict) -> None:
        cfg, dist, model, t0 = self.cfg, self.dist, self.model, time.time()
        B, pad = cfg.batch_size, self.tok.pad_token_id
        p_ids, c_ids = [s.prompt_ids for s in batch.samples], [s.completion_ids for s in batch.samples]
        m["lr"] = learning_rate_at(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = m["lr"]
        model.train()
        if cfg.old_logprobs == "engine":     # pi_old = the sampling policy's own log-probs: no extra pass
            old_logp = pad_logprobs(batch.samples)                                          # [b, T]
        elif batch.old_logp is not None:     # scored by the drift pass (--drift-at sampling), same weights
            old_logp = batch.old_logp
        else:                                # pi_old recomputed by the trainer, as verl's compute_log_prob
            with torch.no_grad():
                old_logp, _ = sequence_logprobs(model, p_ids, c_ids, pad, cfg.temperature, cfg.micro_batch_size)
        mask = policy_mask(batch.samples, old_logp.shape[1])    # [b, T] sampled tokens; tool output is 0
        if batch.carry is not None:                             # segment: only the tokens that carry an advantage
            mask = mask * batch.carry[self.mine, :mask.shape[1]]
        weights, fresh = None, torch.ones(len(batch.samples), 1)
        if batch.staleness is not None:     # continuous: off-policy rows (older adapters) are corrected
            fresh = torch.tensor(batch.staleness[self.mine] == 0, dtype=torch.float32).unsqueeze(1)   # [b, 1]
            if cfg.old_logprobs == "trainer":                   # w_t = min(pi_old / pi_behaviour, C)
                weights, tis = tis_weights(old_logp.cpu(), pad_logprobs(batch.samples, old_logp.shape[1]), mask,
                                           cfg.tis_cap)
                m.update(tis)
        dev = next(model.parameters()).device     # the loss's inputs where the log-probs are (CUDA)
        old_logp, mask, fresh = old_logp.to(dev), mask.to(dev), fresh.to(dev)
        weights = None if weights is None else weights.to(dev)
        self.stats, skipped, before = [], 0, []
        mb = B // cfg.num_minibatches
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(step))
            for s in range(0, B, mb):
                rows = [j // dist.world for j in perm[s:s + mb].tolist() if j % dist.world == dist.rank]  # local
                rows.sort(key=lambda i: len(p_ids[i]) + len(c_ids[i]))     # similar lengths share a micro-batch
                if cfg.loss_variant == "gspo":
                    norm = float(min(mb, B - s))                              # sequences in the global mini-batch
                else:
                    norm = dist.sum(mask[rows].sum().reshape(1)).item()      # tokens in the global mini-batch
                total = torch.zeros(1)
                for u in range(0, len(rows), cfg.micro_batch_size):
                    r = rows[u:u + cfg.micro_batch_size]
                    logp, _ = sequence_logprobs(model, [p_ids[i] for i in r], [c_ids[i] for i in r], pad,
                                                cfg.temperature, cfg.micro_batch_size)
                    mk = mask[r, :logp.shape[1]]
                    adv = batch.adv[[self.mine[i] for i in r]].to(dev)           # [b] or [b, T] (segment)
                    loss, st = policy_loss(logp, old_logp[r, :logp.shape[1]],
                                           adv[:, :logp.shape[1]] if adv.dim() == 2 else adv, mk, cfg.epsilon,
                                           cfg.epsilon_high, cfg.dual_clip, cfg.loss_variant, normalizer=norm,
                                           weights=None if weights is None else weights[r, :logp.shape[1]])
                    loss.backward()
                    total += loss.item()
                    self.stats.append(st)
                    if cfg.old_logprobs == "engine" and epoch == 0 and s == 0:   # no optimizer step yet
                        width = (0, old_logp.shape[1] - logp.shape[1])
                        before.append((F.pad(logp.detach(), width), old_logp[r], F.pad(mk * fresh[r], width)))
                if before:                   # the engine-vs-trainer check, free: same tokens, same weights
                    trainer_lp, engine_lp, fresh_mask = (torch.cat([x[i] for x in before]) for i in range(3))
                    if fresh_mask.any():     # (continuous: rows sampled by the current adapter only)
                        m.update({f"sync/{k}": v for k, v in compare_logprobs(trainer_lp, engine_lp, fresh_mask).items()})
                    before = []
                dist.sum_grads(self.params)                                   # explicit all-reduce of LoRA grads
                total = dist.sum(total).item()
                if not math.isfinite(total):                                 # every rank sees the same sum
                    self.opt.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.opt_steps += 1
                m["loss"] = total
        m["time/train"] = time.time() - t0
        m["nonfinite_loss_updates"] = skipped
        self.bad_steps = self.bad_steps + 1 if skipped else 0
        if self.bad_steps >= cfg.max_bad_steps:
            raise RuntimeError(f"stopping: {self.bad_steps} consecutive steps with a non-finite loss (step {step}); "
                               f"the last checkpoint is in {cfg.output_dir}/ckpt")

    # ---- 5a. drift D on each prompt's stored previous response (SPO): how far the policy moved since then
    def drift(self, batch: Batch, m: dict) -> None:
        """D = mean |log pi_then(y') - log pi_now(y')| over the response y' stored at the prompt's last visit
        (spo.policy_drift), and this step's responses stored for next time. --drift-at update (official
        code, run after `update`): both scores are post-update, so one no-grad pass scores the stored and the
        current responses. --drift-at sampling (the paper's "last policy that acted on x", run before
        `update`): then = that visit's pi_old, now = the policy that sampled this step; the pass scores the
        stored responses only when pi_old comes from the engine, and otherwise also this step's, whose
        scores are pi_old and go to `update` (CODE!=PAPER: the official code measures post-update)."""
        cfg, dist, t0 = self.cfg, self.dist, time.time()
        if cfg.algo != "spo":
            return
        B, mine = cfg.batch_size, self.mine
        p_ids, c_ids = [s.prompt_ids for s in batch.samples], [s.completion_ids for s in batch.samples]
        prev = [self.stored.get(batch.keys[j]) for j in mine]
        seen = [i for i, p in enumerate(prev) if p is not None]
        engine_old = cfg.drift_at == "sampling" and cfg.old_logprobs == "engine"   # this step's pi_old is known
        rows_p = [prev[i][0] for i in seen] + ([] if engine_old else p_ids)
        rows_c = [prev[i][1] for i in seen] + ([] if engine_old else c_ids)
        if rows_p:
            with torch.no_grad():
                now, nmask = sequence_logprobs(self.model, rows_p, rows_c, self.tok.pad_token_id, cfg.temperature,
                                               cfg.micro_batch_size)                         # [n, T] each
        local_d = np.zeros(len(mine))
        if seen:
            then = torch.zeros(len(seen), now.shape[1], device=now.device)
            for k, i in enumerate(seen):
                then[k, :len(prev[i][2])] = torch.tensor(prev[i][2])
                if prev[i][3] is not None:   # engine scores: sampled tokens only (no tool output)
                    nmask[k, :len(prev[i][3])] *= torch.tensor(prev[i][3], dtype=nmask.dtype, device=nmask.device)
            local_d[seen] = policy_drift(then, now[:len(seen)], nmask[:len(seen)]).cpu().numpy()
        if engine_old:                       # stored with the engine's sampling log-probs (and which tokens it sampled)
            new = [(s.prompt_ids, s.completion_ids, list(s.logprobs), s.mask) for s in batch.samples]
        else:
            new = [(p_ids[i], c_ids[i], now[len(seen) + i, :len(c_ids[i])].tolist(), None) for i in range(len(mine))]
            if cfg.drift_at == "sampling":   # the pre-update scores of this step's responses are pi_old: reused
                batch.old_logp = now[len(seen):, :max(max(len(c) for c in c_ids), 1)]
        for j, entry in zip(range(B), dist.rows(new, B)):    # store for the next visit, on every rank
            self.stored[batch.keys[j]] = entry
        batch.drift = np.array(dist.rows(local_d.tolist(), B))
        batch.first = np.array(dist.rows([p is None for p in prev], B))
        m["time/drift"] = time.time() - t0

    # ---- 5. the tracker (Eq. 5): rho from the drift, then alpha, beta
    def track(self, batch: Batch, m: dict) -> None:
        t0 = time.time()
        if self.cfg.algo == "spo":
            drift, first = batch.drift, batch.first
            rho = self.tracker.update(batch.keys, batch.rewards, drift)
            m.update({"spo/rho_mean": float(rho.mean()), "spo/rho_min": float(rho.min()),
                      "spo/rho_max": float(rho.max()),
                      "spo/drift_mean": float(drift[~first].mean()) if (~first).any() else 0.0,
                      "spo/first_visit_share": float(first.mean()),
                      "spo/n_eff_mean": float(self.tracker.effective_size(batch.keys).mean())})
        m["time/tracker"] += time.time() - t0

    # ---- 6. adapter to the engine; the engine-vs-trainer log-prob check when due
    def sync_engine(self, batch: Batch, step: int, m: dict) -> None:
        cfg, dist = self.cfg, self.dist
        if cfg.dist_check_every and dist.world > 1 and step % cfg.dist_check_every == 0:
            dist.check_same(state_hash(self.tracker, self.sampler, self.model),
                            f"tracker/sampler/adapter state at step {step}")
        self.engine.wake_up()
        if self.collector is None:
            self.engine.load_adapter(self.model)
        else:                                # drop the too-stale, keep the adapters the others still sample with
            m["collect/dropped_now"] = self.collector.advance(self.opt_steps)
            self.engine.load_adapter(self.model, keep=self.collector.versions_in_use())
        if cfg.sync_check_every and self.engine.name != "hf" and cfg.old_logprobs == "trainer" and \
                (step == self.start + 1 or step % cfg.sync_check_every == 0):
            again = self.engine.generate([self.fmt[batch.keys[j]] for j in self.mine[:4]],
                                         cfg.max_completion_length, cfg.temperature, seed=step)
            m.update({f"sync/{k}": v for k, v in check_sync(self.model, again, self.tok.pad_token_id,
                                                            cfg.temperature).items()})

    # ---- the step's metrics (metrics.jsonl; README "Metrics")
    def summarise(self, batch: Batch, m: dict) -> None:
        cfg, dist, B = self.cfg, self.dist, self.cfg.batch_size
        lens = np.array(dist.rows([len(s.completion_ids) for s in batch.samples], B))
        truncated = dist.rows([s.finish_reason == "length" for s in batch.samples], B)
        r = batch.rewards
        norm_adv = batch.adv.numpy() if batch.carry is None else batch.adv[batch.carry > 0].numpy()
        m.update({
            "reward": float(r.mean()),
            "adv/raw_var": float(np.var(batch.raw)),
            "adv/noBaseline_var": float(np.var(r)),
            "adv/near_zero_0.02": float(np.mean(np.abs(norm_adv) < 0.02)),
            "adv/near_zero_1e-4": float(np.mean(np.abs(norm_adv) < 1e-4)),
            "tracker/brier": float(np.mean((batch.v_prev - r) ** 2)) if cfg.algo == "spo" else float("nan"),
            "response_length": float(lens.mean()),
            "truncation_rate": float(np.mean(truncated)),
            "tokens_per_s": float(lens.sum() / max(m["time/generate"], 1e-9)),
            "reward_errors": self.reward_fn.errors,
        })
        if cfg.tools != "none":
            m.update(tool_metrics(batch.samples))      # this rank's responses
        for name in ("clip_frac_low", "clip_frac_high", "clip_frac_dual", "approx_kl", "ratio_mean"):
            vals = [s[name] for s in self.stats if name in s]
            if vals:
                m[f"loss/{name}"] = float(np.mean(vals))


# ============================================================== the training loop


def train(cfg: Config) -> dict:
    """Set up, then: step, log, evaluate and checkpoint when due; stop cleanly on SIGINT/SIGTERM."""
    validate(cfg)
    tasks = read_tasks(cfg)                  # bad data stops here, before any model loads or file is written
    dist = Dist(cfg.dist_timeout)
    if cfg.tools == "python":                # an unreachable sandbox server stops here too
        if cfg.sandbox_url:
            check_server(cfg.sandbox_url)
        else:
            dist.say(f"sandbox: local processes, protected by {', '.join(isolation())} (README: tools)")
    if cfg.batch_size % dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must divide evenly over {dist.world} ranks")
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
    dist.say("config:", json.dumps(dataclasses.asdict(cfg)))

    tr = Trainer(cfg, dist, model, tok, engine, train_tasks, held, fmt)
    if state is not None:
        tr.load_state_dict(state)
        dist.say(f"resumed from {ckpt_dir} at step {tr.start}")
    elif cfg.algo == "spo":
        offline_init(cfg, tr.tracker, engine, train_tasks, fmt, tr.reward_fn, dist)
    log = Logger(cfg, tr.start, cfg.resume) if dist.main else None
    if tr.start == 0 and dist.main:
        log.eval(0, evaluate(cfg, engine, held, fmt))

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
            log.step(m, batch.samples[0].text, batch.rewards[0], batch.tasks[0])
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                log.eval(step, evaluate(cfg, engine, held, fmt))
            if (cfg.save_every and step % cfg.save_every == 0) or stop.signal:
                save_checkpoint(cfg, step, tr)
        dist.barrier()
        if stop.signal:
            if log:
                log.close()
            lost = f" ({tr.collector.close()} trajectories in flight are not saved)" if tr.collector else ""
            dist.say(f"{stop.signal}: saved a checkpoint at step {step}{lost}; continue with --resume {cfg.output_dir}")
            dist.close()
            return {"stopped": stop.signal, "step": step}
        if cfg.token_budget and sum(h.get("tokens/generated", 0) for h in tr.history) >= cfg.token_budget:
            dist.say(f"--token-budget {cfg.token_budget} reached at step {step}")
            break

    if tr.collector:
        dist.say(f"continuous collection: {tr.collector.close()} trajectories still in flight aborted")
    return finish(cfg, dist, tr, log, lambda: evaluate(cfg, engine, held, fmt))


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
        train(apply_profile(cfg, argv))
    except (ConfigError, DataError, SandboxUnavailable) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
