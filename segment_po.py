"""Segment Policy Optimization (Guo et al., arXiv 2505.23564) in train.py's loop: `--algo segment`.

The other "SPO" (segment.py has its pure functions and the method). `SegmentTrainer` overrides two phases of
`trainer.Trainer`: `advantages` (one advantage per segment, from Monte Carlo values, instead of one per response)
and `loss_mask` (only the tokens that carry an advantage). It keeps no tracker: prompts are drawn in shuffled
epochs and the drift and track phases are skipped. docs/segment.md has the flags and the measurements.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from engines import request_seeds
from segment import cutpoint_bounds, cutpoints, fixed_bounds, segment_batch
from trainer import Batch, Trainer


@dataclass
class SegmentBatch(Batch):
    carry: torch.Tensor = None           # [B, T] 1 on the tokens that carry an advantage (adv is [B, T] too)


class SegmentTrainer(Trainer):
    Batch = SegmentBatch

    # ---- 3. segments, V at each boundary by Monte Carlo, chain advantages (Eq. 4 of Guo et al.)
    def advantages(self, batch: SegmentBatch, m: dict) -> None:
        cfg, N, samples, t0 = self.cfg, self.cfg.mc_rollouts, batch.samples, time.time()
        local_r = self.rewards(batch)
        bounds = [cutpoint_bounds(torch.tensor(s.logprobs), cfg.cutpoint_threshold, cfg.segment_interval)
                  if cfg.segment_partition == "cutpoint" else fixed_bounds(len(s.completion_ids), cfg.segment_size)
                  for s in samples]
        starts = [(i, b) for i, bs in enumerate(bounds) for b in bs[:-1]]      # V is wanted at these prefixes
        seed = cfg.seed * 1_000_003 + len(self.history) * 10_007 + 7_777_777
        cont = self.engine.generate_ids(                                     # all continuations in one call
            [samples[i].prompt_ids + samples[i].completion_ids[:b] for i, b in starts for _ in range(N)],
            [cfg.max_completion_length - b for i, b in starts for _ in range(N)], cfg.temperature, seed=seed,
            seeds=request_seeds(self.engine, cfg.deterministic_generation, [seed + k for k in range(len(starts) * N)]))
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

    # ---- 6. the loss: only the tokens that carry an advantage, each with its segment's
    def loss_mask(self, batch: SegmentBatch) -> torch.Tensor:
        mask = super().loss_mask(batch)                                     # [b, T]
        return mask * batch.carry[self.mine, :mask.shape[1]]

    def row_advantages(self, batch: SegmentBatch, rows: list, width: int) -> torch.Tensor:
        return batch.adv[[self.mine[i] for i in rows], :width]              # [b, t]

    def summarise(self, batch: SegmentBatch, m: dict) -> None:
        super().summarise(batch, m)
        adv = batch.adv[batch.carry > 0].numpy()                            # the advantages that are trained on
        m["adv/near_zero_0.02"] = float(np.mean(np.abs(adv) < 0.02))
        m["adv/near_zero_1e-4"] = float(np.mean(np.abs(adv) < 1e-4))
