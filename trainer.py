"""One SPO (or GRPO) training step as named phases: `Trainer.step`, a method a phase, in the order they run.

  1. draw          B prompts, weights sqrt(v(1-v)) + eps from the tracker (GRPO: B/G prompts, shuffled) Eq. 11
  2. collect       ONE response per prompt (GRPO: G per prompt)                                     rollout.py
  3. advantages    rewards; A = r - v_hat_{-1}, normalised over the batch (GRPO: the group mean)  Eq. 8-9
  4. old_logprobs  pi_old of the sampled tokens: the engine's own, or one no-grad trainer pass     logprobs.py
  5. drift         D on each prompt's stored previous response, before the update                Sec. 4.1
                   (--drift-at update, the official code: after it, between post-update policies)
  6. update        PPO-clip mini-batch updates, token-mean                                         Eq. 10
  7. track         rho from D, then alpha, beta                                                    Eq. 5
  8. sync_engine   the new adapter into the engine
The phases are SPO and GRPO alone. An extension (extensions/) subclasses `Trainer` and overrides the phases it
changes: continuous.py (draw, collect, the adapter push, the loss weights), segment_po.py (SPO-chain: advantages,
the loss mask; SPO-tree: draw, collect, advantages; no tracker). The loop around `step` is in train.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from config import Config, learning_rate_at
from dist import Dist, state_hash
from logprobs import check_sync, compare_logprobs, pad_logprobs, policy_mask, sequence_logprobs
from rewards import RewardFn
from rollout import request_seeds
from sampler import PrioritizedSampler, priority_weights
from spo import degenerate_share, grpo_advantages, live_group_var, policy_drift, policy_loss, spo_advantages
from tracker import ValueTracker

# ============================================================== what a step carries


@dataclass
class Batch:
    """One step's data, phase to phase. Rows are global ([B]) unless marked "this rank's" ([b])."""
    tasks: list                          # [B] Task
    keys: list                           # [B] prompt texts, the tracker's keys
    samples: list = None                 # [b] this rank's responses (rollout.Sample), rows `Trainer.mine`
    rewards: np.ndarray = None           # [B] r in {0, 1}
    v_prev: np.ndarray = None            # [B] v_hat_{-1}: the tracker's values before this step's rewards
    adv: torch.Tensor = None             # [B] normalised advantages (Eq. 9)
    raw: np.ndarray = None               # [B] unnormalised advantages r - baseline
    old_logp: torch.Tensor = None        # [b, T] pi_old of the sampled tokens
    old_valid: list = None               # [b] per row: the tokens old_logp scores (engine: sampled ones), None: all
    drift: np.ndarray = None             # [B] D since each prompt's last visit (0 on a first visit)
    first: np.ndarray = None             # [B] True on a prompt's first visit


class Stored(NamedTuple):
    """A prompt's response at its last visit, kept for the drift D at its next visit (Sec. 4.1)."""
    prompt_ids: list
    completion_ids: list
    logprobs: list                       # its tokens' log-probs under the policy of that visit
    mask: list | None                    # the tokens those scores are valid on (engine scores: sampled only); None: all


def skip(batch: Batch, m: dict) -> None:
    """A phase that does nothing in this configuration."""


def stored_drift(prev: list, now: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """D per row (spo.policy_drift): prev[i], a Stored or None, against `now`, the current scores of the stored
    responses of the rows that have one ([n_seen, T] with its mask, in row order); 0 on a first visit."""
    d = np.zeros(len(prev))
    seen = [i for i, p in enumerate(prev) if p is not None]
    if not seen:
        return d
    then = torch.zeros(len(seen), now.shape[1], device=now.device)                # [n_seen, T]
    for k, i in enumerate(seen):
        then[k, :len(prev[i].logprobs)] = torch.tensor(prev[i].logprobs)
        if prev[i].mask is not None:     # engine scores: the tokens it sampled only (tool output has none)
            mask[k, :len(prev[i].mask)] *= torch.tensor(prev[i].mask, dtype=mask.dtype, device=mask.device)
    d[seen] = policy_drift(then, now[:len(seen)], mask[:len(seen)]).cpu().numpy()
    return d


# ============================================================== the trainer: state and one step


class Trainer:
    """The run's state (policy, engine, tracker, sampler, optimizer, stored responses, history) and its step."""
    Batch = Batch                        # an extension that carries more per step subclasses it

    def __init__(self, cfg: Config, dist: Dist, model, tok, engine, train_tasks, held, fmt):
        self.cfg, self.dist, self.model, self.tok, self.engine = cfg, dist, model, tok, engine
        self.train_tasks, self.held, self.fmt = train_tasks, held, fmt
        self.keys = [t.prompt for t in train_tasks]
        self.reward_fn = RewardFn(cfg.format_gate)
        self.tracker = ValueTracker(cfg.rho_min, cfg.rho_max, cfg.d_half)
        self.sampler = PrioritizedSampler(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.stored: dict[str, Stored] = {}   # prompt -> its response at the last visit (SPO's drift)
        self.history = []      # one metrics dict per step
        self.mine = list(range(dist.rank, cfg.batch_size, dist.world))   # this rank's rows of every batch
        self.bad_steps = 0     # consecutive steps with a skipped (non-finite) update
        self.start = 0         # the step a resumed run continues after
        self.opt_steps = 0     # optimizer steps taken
        # --drift-at, chosen once: D before this step's update (the policies that sampled) or after it
        spo = cfg.algo == "spo"
        self.drift_before_update = self.drift_sampling if spo and cfg.drift_at == "sampling" else skip
        self.drift_after_update = self.drift_update if spo and cfg.drift_at == "update" else skip

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "tracker": self.tracker.state_dict(),
                "sampler": self.sampler.state_dict(), "stored": {k: tuple(v) for k, v in self.stored.items()},
                "history": self.history, "opt_steps": self.opt_steps}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.sampler.load_state_dict(state["sampler"])
        self.history, self.start, self.opt_steps = state["history"], state["step"], state["opt_steps"]
        self.stored = {k: Stored(*v) for k, v in state["stored"].items()}

    def close(self) -> str:
        """End of training or a stop: what is lost that a checkpoint does not keep (nothing, here)."""
        return ""

    def step(self, step: int) -> tuple[dict, Batch]:
        m = {"step": step}
        batch = self.draw(m)                 # 1. prompts (Eq. 11)
        self.collect(batch, step, m)         # 2. one response per prompt
        self.advantages(batch, m)            # 3. rewards, A = r - v_hat_{-1}, normalised (Eq. 8-9)
        self.old_logprobs(batch, m)          # 4. pi_old of the sampled tokens
        self.drift_before_update(batch, m)   # 5. drift D since each prompt's last visit (--drift-at sampling)
        self.update(batch, step, m)          # 6. PPO-clip mini-batch updates (Eq. 10)
        self.drift_after_update(batch, m)    # 5. ... or here (--drift-at update); the other of the two is `skip`
        self.track(batch, m)                 # 7. rho from D, tracker update (Eq. 5)
        self.sync_engine(batch, step, m)     # 8. adapter to the engine
        self.summarise(batch, m)
        self.history.append(m)
        return m, batch

    # ---- 1. prompts: Eq. 11 weights from the tracker (SPO) or shuffled epochs (GRPO); the same on every rank
    def draw(self, m: dict) -> Batch:
        cfg, t0 = self.cfg, time.time()
        G = cfg.group_size if cfg.algo == "grpo" else 1
        idx = np.repeat(self.choose(cfg.batch_size // G), G)                 # [B] a GRPO group's rows adjacent
        m["time/draw"] = time.time() - t0
        self.curriculum(idx, m)
        tasks = [self.train_tasks[i] for i in idx]
        return self.Batch(tasks, [t.prompt for t in tasks])

    def choose(self, n: int, busy: set = frozenset()) -> np.ndarray:
        """n distinct prompt indices, none in `busy`: Eq. 11 weights (SPO) or the next of a shuffled epoch."""
        if self.cfg.algo == "spo" and not self.cfg.uniform_sampling:
            free = np.array([i for i in range(len(self.keys)) if i not in busy])
            v = self.tracker.value([self.keys[i] for i in free])             # [M_free] v_hat
            return free[self.sampler.sample(priority_weights(v, self.cfg.sampling_epsilon), min(n, len(free)))]
        n = min(n, len(self.keys) - len(busy))
        return self.sampler.shuffled(len(self.keys), n, exclude=busy)       # GRPO, --uniform-sampling

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
        base = cfg.seed * 1_000_003 + step * 10_007
        seeds = request_seeds(self.engine, cfg.deterministic_generation, [base + j for j in self.mine])
        batch.samples = self.engine.generate([self.fmt[batch.keys[j]] for j in self.mine], cfg.max_completion_length,
                                             cfg.temperature, seed=base + self.dist.rank, seeds=seeds)
        m["time/generate"] = time.time() - t0
        m["tokens/generated"] = sum(self.dist.rows([len(s.completion_ids) for s in batch.samples], cfg.batch_size))
        self.engine.sleep()                  # vLLM on CUDA: free the KV cache, offload weights while training

    # ---- 3. rewards (gathered: the batch is global) and advantages
    def rewards(self, batch: Batch) -> list:
        """This rank's rewards; sets batch.rewards [B] (all ranks') and batch.v_prev, the tracker before them."""
        local = [self.reward_fn(s.text, batch.tasks[j].answer) for s, j in zip(batch.samples, self.mine)]
        batch.rewards = np.array(self.dist.rows(local, self.cfg.batch_size))
        batch.v_prev = self.tracker.value(batch.keys)                       # v_hat_{-1}: before this reward
        return local

    def advantages(self, batch: Batch, m: dict) -> None:
        cfg = self.cfg
        self.rewards(batch)
        r = batch.rewards
        if cfg.algo == "spo":
            base = np.zeros_like(batch.v_prev) if cfg.no_baseline else batch.v_prev
            batch.adv = spo_advantages(r, base, zero_if_rewards_agree=cfg.zero_if_rewards_agree)  # Eq. 8-9, global
            batch.raw = r - base
        else:
            G = cfg.group_size
            batch.adv = grpo_advantages(r, G)
            batch.raw = r - r.reshape(-1, G).mean(1).repeat(G)
            m["grpo/degenerate_share"], m["grpo/live_raw_var"] = degenerate_share(r, G), live_group_var(r, G)

    # ---- 4. pi_old: the sampling policy's log-probs of its own tokens
    def old_logprobs(self, batch: Batch, m: dict) -> None:
        """--old-logprobs engine: the log-probs the engine returned (no extra pass; tool output is 0 there and
        masked). trainer: one no-grad pass of the policy before the update, as verl's compute_log_prob."""
        t0 = time.time()
        if self.cfg.old_logprobs == "engine":
            batch.old_logp = pad_logprobs(batch.samples)                                    # [b, T]
            batch.old_valid = [s.mask for s in batch.samples]
        else:
            batch.old_logp = self.score([s.prompt_ids for s in batch.samples],
                                        [s.completion_ids for s in batch.samples])[0]        # [b, T]
            batch.old_valid = [None] * len(batch.samples)
        m["time/old_logprobs"] = time.time() - t0

    def score(self, prompt_ids: list, completion_ids: list):
        """The policy's log-probs of given responses, no gradient: ([n, T], mask [n, T])."""
        with torch.no_grad():
            return sequence_logprobs(self.model, prompt_ids, completion_ids, self.tok.pad_token_id,
                                     self.cfg.temperature, self.cfg.micro_batch_size)

    # ---- 5. the drift D on each prompt's stored previous response (SPO), and this step's responses stored
    def drift_sampling(self, batch: Batch, m: dict) -> None:
        """--drift-at sampling, before the update (the paper's "the last policy that acted on x"): D between the
        pi_old stored at the prompt's last visit and the policy sampling now; one no-grad pass over the stored
        responses; this step's responses are stored with their pi_old. CODE!=PAPER: the official code
        measures D after the update (`drift_update`)."""
        t0, prev = time.time(), [self.stored.get(batch.keys[j]) for j in self.mine]
        seen = [p for p in prev if p is not None]
        d = stored_drift(prev, *self.score([p.prompt_ids for p in seen], [p.completion_ids for p in seen])) \
            if seen else np.zeros(len(prev))
        new = [Stored(s.prompt_ids, s.completion_ids, batch.old_logp[i, :len(s.completion_ids)].tolist(),
                      batch.old_valid[i]) for i, s in enumerate(batch.samples)]
        self.keep(batch, prev, d, new, m, t0)

    def drift_update(self, batch: Batch, m: dict) -> None:
        """--drift-at update, after the update (the official code, spo_ray_trainer.py): D between the post-update
        score stored at the last visit and the post-update score now; one no-grad pass scores the stored and
        this step's responses, which are stored with their post-update scores."""
        t0, prev = time.time(), [self.stored.get(batch.keys[j]) for j in self.mine]
        seen = [p for p in prev if p is not None]
        now, mask = self.score([p.prompt_ids for p in seen] + [s.prompt_ids for s in batch.samples],
                               [p.completion_ids for p in seen] + [s.completion_ids for s in batch.samples])
        d = stored_drift(prev, now, mask)
        new = [Stored(s.prompt_ids, s.completion_ids, now[len(seen) + i, :len(s.completion_ids)].tolist(), None)
               for i, s in enumerate(batch.samples)]
        self.keep(batch, prev, d, new, m, t0)

    def keep(self, batch: Batch, prev: list, d: np.ndarray, new: list, m: dict, t0: float) -> None:
        """Gather this rank's drifts and new stored responses: every rank stores every row, in batch order."""
        B = self.cfg.batch_size
        for j, entry in zip(range(B), self.dist.rows(new, B)):
            self.stored[batch.keys[j]] = entry
        batch.drift = np.array(self.dist.rows(d.tolist(), B))
        batch.first = np.array(self.dist.rows([p is None for p in prev], B))
        m["time/drift"] = time.time() - t0

    # ---- 6. PPO-clip mini-batch updates (Eq. 10); gradients summed over ranks
    def update(self, batch: Batch, step: int, m: dict) -> None:
        cfg, dist, t0 = self.cfg, self.dist, time.time()
        m["lr"] = learning_rate_at(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = m["lr"]
        self.model.train()
        dev = next(self.model.parameters()).device          # the loss's inputs where the log-probs are (CUDA)
        old_logp = batch.old_logp.to(dev)                   # [b, T]
        mask = self.loss_mask(batch).to(dev)                # [b, T] the tokens trained on
        weights = self.loss_weights(batch, mask, m)         # [b, T] per-token loss weights, or None
        # the free engine-vs-trainer check (engine pi_old): the first micro-batches, before any optimizer step
        check = self.check_mask(batch, mask) if cfg.old_logprobs == "engine" else None
        B = len(batch.adv)                                  # global rows: --batch-size (SPO-tree: its segments)
        mb = -(-B // cfg.num_minibatches)                   # rows a mini-batch (the last may hold fewer)
        stats, skipped = [], 0
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(step))
            for s in range(0, B, mb):
                rows = dist.local(perm[s:s + mb].tolist())        # this rank's rows of the global mini-batch
                rows.sort(key=lambda i: len(batch.samples[i].prompt_ids) + len(batch.samples[i].completion_ids))
                norm = float(min(mb, B - s)) if cfg.loss_variant == "gspo" else \
                    dist.sum(mask[rows].sum().reshape(1)).item()  # GSPO: sequences; else tokens, of the mini-batch
                first = check if epoch == 0 and s == 0 else None
                total = self.accumulate(batch, rows, old_logp, mask, weights, norm, stats, first, m)
                skipped += not self.optimizer_step(total, m)
        m.update({"time/train": time.time() - t0, "nonfinite_loss_updates": skipped})
        for name in ("clip_frac_low", "clip_frac_high", "clip_frac_dual", "approx_kl", "ratio_mean"):
            if vals := [st[name] for st in stats if name in st]:
                m[f"loss/{name}"] = float(np.mean(vals))
        self.bad_steps = self.bad_steps + 1 if skipped else 0
        if self.bad_steps >= cfg.max_bad_steps:
            raise RuntimeError(f"stopping: {self.bad_steps} consecutive steps with a non-finite loss (step {step}); "
                               f"the last checkpoint is in {cfg.output_dir}/ckpt")

    def loss_mask(self, batch: Batch) -> torch.Tensor:
        """[b, T] the tokens the loss trains on: the sampled ones (tool output and padding are 0)."""
        return policy_mask(batch.samples, batch.old_logp.shape[1])

    def loss_weights(self, batch: Batch, mask: torch.Tensor, m: dict) -> torch.Tensor | None:
        """[b, T] per-token weights on the loss, or None (on-policy: none)."""
        return None

    def check_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """[b, T] the tokens the free engine-vs-trainer check compares (those the current adapter sampled)."""
        return mask

    def row_advantages(self, batch: Batch, rows: list, width: int) -> torch.Tensor:
        """The advantages of this rank's `rows` for a micro-batch `width` tokens wide: [b] (one per response)."""
        return batch.adv[[self.mine[i] for i in rows]]

    def accumulate(self, batch: Batch, rows: list, old_logp, mask, weights, norm: float, stats: list,
                   check, m: dict) -> torch.Tensor:
        """Forward and backward of this rank's `rows` of a mini-batch, micro-batch by micro-batch (gradients
        accumulate); returns the summed loss. `check`: also compare with the engine's log-probs on that mask."""
        cfg, total, seen = self.cfg, torch.zeros(1), []
        dev = old_logp.device
        for u in range(0, len(rows), cfg.micro_batch_size):
            r = rows[u:u + cfg.micro_batch_size]
            logp, _ = sequence_logprobs(self.model, [batch.samples[i].prompt_ids for i in r],
                                        [batch.samples[i].completion_ids for i in r], self.tok.pad_token_id,
                                        cfg.temperature, cfg.micro_batch_size)                     # [b, t]
            t = logp.shape[1]
            loss, st = policy_loss(logp, old_logp[r, :t], self.row_advantages(batch, r, t).to(dev), mask[r, :t],
                                   cfg.epsilon, cfg.epsilon_high, cfg.dual_clip, cfg.loss_variant, normalizer=norm,
                                   weights=None if weights is None else weights[r, :t])
            loss.backward()
            total += loss.item()
            stats.append(st)
            if check is not None:
                seen.append((F.pad(logp.detach(), (0, old_logp.shape[1] - t)), old_logp[r], check[r]))
        if seen:
            trainer_lp, engine_lp, on = (torch.cat([x[i] for x in seen]) for i in range(3))
            if on.any():
                m.update({f"sync/{k}": v for k, v in compare_logprobs(trainer_lp, engine_lp, on).items()})
        return total

    def optimizer_step(self, total: torch.Tensor, m: dict) -> bool:
        """All-reduce the gradients, then one AdamW step; a non-finite loss (every rank sees the same sum)
        skips it. Returns whether the step was taken."""
        self.dist.sum_grads(self.params)                                     # explicit all-reduce of LoRA grads
        total = self.dist.sum(total).item()
        if not math.isfinite(total):
            self.opt.zero_grad(set_to_none=True)
            return False
        m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.opt_steps += 1
        m["loss"] = total
        return True

    # ---- 7. the tracker (Eq. 5): rho from the drift, then alpha, beta
    def track(self, batch: Batch, m: dict) -> None:
        t0 = time.time()
        if self.cfg.algo == "spo":
            drift, first = batch.drift, batch.first
            rho = self.tracker.update(batch.keys, batch.rewards, drift)
            m.update({"spo/rho_mean": float(rho.mean()), "spo/rho_min": float(rho.min()), "spo/rho_max": float(rho.max()),
                      "spo/drift_mean": float(drift[~first].mean()) if (~first).any() else 0.0,
                      "spo/first_visit_share": float(first.mean()),
                      "spo/n_eff_mean": float(self.tracker.effective_size(batch.keys).mean())})
        m["time/tracker"] = time.time() - t0

    # ---- 8. adapter to the engine; the engine-vs-trainer log-prob check when due
    def sync_engine(self, batch: Batch, step: int, m: dict) -> None:
        cfg, dist = self.cfg, self.dist
        if cfg.dist_check_every and dist.world > 1 and step % cfg.dist_check_every == 0:
            dist.check_same(state_hash(self.tracker, self.sampler, self.model),
                            f"tracker/sampler/adapter state at step {step}")
        self.engine.wake_up()
        self.push_adapter(m)
        if cfg.sync_check_every and self.engine.name != "hf" and cfg.old_logprobs == "trainer" and \
                (step == self.start + 1 or step % cfg.sync_check_every == 0):
            again = self.engine.generate([self.fmt[batch.keys[j]] for j in self.mine[:4]],
                                         cfg.max_completion_length, cfg.temperature, seed=step)
            m.update({f"sync/{k}": v for k, v in check_sync(self.model, again, self.tok.pad_token_id,
                                                            cfg.temperature).items()})

    def push_adapter(self, m: dict) -> None:   # vLLM: save the adapter alone, swap it in; HF: nothing to do
        self.engine.load_adapter(self.model)

    def shown(self, batch: Batch) -> tuple:   # the step's example on the dashboard: (response text, reward, task)
        return batch.samples[0].text, batch.rewards[0], batch.tasks[0]

    # ---- the step's metrics (metrics.jsonl; docs/metrics.md)
    def summarise(self, batch: Batch, m: dict) -> None:
        cfg, dist, B, r = self.cfg, self.dist, self.cfg.batch_size, batch.rewards
        lens = np.array(dist.rows([len(s.completion_ids) for s in batch.samples], B))
        truncated = dist.rows([s.finish_reason == "length" for s in batch.samples], B)
        adv = batch.adv.numpy()
        m.update({
            "reward": float(r.mean()),
            "adv/raw_var": float(np.var(batch.raw)),
            "adv/noBaseline_var": float(np.var(r)),
            "adv/near_zero_0.02": float(np.mean(np.abs(adv) < 0.02)),
            "adv/near_zero_1e-4": float(np.mean(np.abs(adv) < 1e-4)),
            "tracker/brier": float(np.mean((batch.v_prev - r) ** 2)) if cfg.algo == "spo" else float("nan"),
            "response_length": float(lens.mean()),
            "truncation_rate": float(np.mean(truncated)),
            "tokens_per_s": float(lens.sum() / max(m["time/generate"], 1e-9)),
            "reward_errors": self.reward_fn.errors,
            **self.engine.batch_metrics(batch.samples),      # tools: calls, turns, errors (this rank's)
        })
