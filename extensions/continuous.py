"""Continuous, group-free collection in train.py's loop: `--collect continuous --engine vllm` (paper Sec. 5.4).

`ContinuousTrainer` overrides the phases of `trainer.Trainer` that lock-step collection shapes: `draw` and
`collect` (the collector draws prompts as trajectories land; a batch is B landed ones, oldest launched first,
within the staleness bound; collector.py),
`push_adapter` (the engine keeps the adapters that carried trajectories still sample with), and the loss of
off-policy rows: with --old-logprobs trainer each token's loss is weighted by the truncated importance ratio
min(pi_old / pi_behaviour, C) (spo.tis_weights); with --old-logprobs engine pi_old is pi_behaviour itself.
docs/continuous.md has the design and the measurements.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from config import ConfigError
from extensions.collector import ContinuousCollector
from logprobs import pad_logprobs
from spo import tis_weights
from trainer import Batch, Trainer


@dataclass
class ContinuousBatch(Batch):
    staleness: np.ndarray = None         # [B] optimizer steps since each response's adapter was made


class ContinuousTrainer(Trainer):
    Batch = ContinuousBatch

    def __init__(self, cfg, dist, model, tok, engine, train_tasks, held, fmt):
        super().__init__(cfg, dist, model, tok, engine, train_tasks, held, fmt)
        if dist.world > 1:                   # (config.validate has checked --engine vllm)
            raise ConfigError("--collect continuous runs in a single process, not under torchrun")
        self.collector = ContinuousCollector(
            engine, [tok(fmt[k], add_special_tokens=False)["input_ids"] for k in self.keys],
            cfg.max_completion_length, cfg.temperature, cfg.batch_size, cfg.oversample,
            cfg.group_size if cfg.algo == "grpo" else 1, cfg.max_staleness, cfg.seed,
            tools=engine if cfg.tools == "python" else None,
            score=lambda i, s: self.reward_fn(s.text, train_tasks[i].answer),
            updates=cfg.num_minibatches * cfg.ppo_epochs)      # optimizer steps a batch (trainer.update)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "collector": self.collector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        lost = self.collector.load_state_dict(state["collector"])
        self.dist.say(f"continuous collection: {sum(len(g) for g in self.collector.ready)} landed trajectories "
                      f"restored; {lost} were in flight at the checkpoint and are lost (not resumed)")

    def close(self) -> str:
        return f" ({self.collector.close()} trajectories in flight aborted, not saved)"

    # ---- 1. nothing to draw up front: the collector draws (self.choose) as trajectories land
    def draw(self, m: dict) -> ContinuousBatch:
        m["time/draw"] = 0.0
        return self.Batch([], [])

    # ---- 2. B landed trajectories, oldest launched first; the rest stay in flight through the update
    def collect(self, batch: ContinuousBatch, step: int, m: dict) -> None:
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

    # ---- 6. off-policy rows: importance weights on the loss, and only fresh rows in the free sync check
    def loss_weights(self, batch: ContinuousBatch, mask: torch.Tensor, m: dict) -> torch.Tensor | None:
        """w_t = min(pi_old / pi_behaviour, C) with a recomputed pi_old; None when pi_old is the engine's."""
        if self.cfg.old_logprobs != "trainer":
            return None
        behaviour = pad_logprobs(batch.samples, batch.old_logp.shape[1])            # [b, T] the engine's
        w, stats = tis_weights(batch.old_logp.cpu(), behaviour, mask.cpu(), self.cfg.tis_cap)
        m.update(stats)
        return w.to(mask.device)

    def check_mask(self, batch: ContinuousBatch, mask: torch.Tensor) -> torch.Tensor:
        fresh = torch.tensor(batch.staleness[self.mine] == 0, dtype=mask.dtype, device=mask.device)
        return mask * fresh.unsqueeze(1)      # [b, T] rows sampled by the current adapter only

    # ---- 8. drop the too-stale, keep the adapters the others still sample with
    def push_adapter(self, m: dict) -> None:
        m["collect/dropped_now"] = self.collector.advance(self.opt_steps)
        self.engine.load_adapter(self.model, keep=self.collector.versions_in_use())
