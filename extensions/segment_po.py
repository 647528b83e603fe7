"""Segment Policy Optimization (Guo et al., arXiv 2505.23564) in train.py's loop: `--algo segment`.

The other "SPO" (segment.py has its pure functions and the method). Two instances, each a `trainer.Trainer`
subclass that overrides the phases it changes. Neither keeps a tracker: prompts are drawn in shuffled epochs and
the drift and track phases are skipped. docs/segment.md has the flags and the measurements.

- `SegmentTrainer` (SPO-chain; --segment-partition cutpoint or fixed): `advantages` (one advantage per segment of
  each response, from Monte Carlo continuations) and `loss_mask` (only the tokens that carry an advantage).
- `TreeTrainer` (SPO-tree; --segment-partition tree): `draw` (one prompt a tree), `collect` (the trees, one
  engine call a level), `advantages` (tree values; the trained rows become the segments with A != 0, each
  prompt + its ancestors' tokens -> its own tokens, one advantage a row: `row_advantages`), `summarise`. The
  rows' count varies from step to step; a step whose leaves all agree trains nothing (`update` skips it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from config import prompts_per_step, tree_shape
from extensions.segment import (cutpoint_bounds, cutpoints, fixed_bounds, segment_batch, tree_advantages, tree_segments,
                     tree_values)
from rollout import Sample, request_seeds
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


# ============================================================== SPO-tree


@dataclass
class Tree:
    """One prompt's sampled tree, nodes parents first; node 0 is the prompt (no tokens, parent -1)."""
    prompt_ids: list
    parent: list = field(default_factory=lambda: [-1])
    samples: list = field(default_factory=lambda: [None])   # node i's own segment (rollout.Sample), from its parent
    level: list = field(default_factory=lambda: [0])
    open: list = field(default_factory=list)                # truncated nodes of the newest level: expanded next

    def add(self, parent: int, s: Sample, expand: bool) -> None:
        self.parent.append(parent)
        self.samples.append(s)
        self.level.append(self.level[parent] + 1)
        if expand:
            self.open.append(len(self.parent) - 1)

    def path(self, i: int) -> list:
        """The response's token ids from the prompt down to and including node i."""
        out = []
        while i > 0:
            out, i = self.samples[i].completion_ids + out, self.parent[i]
        return out

    def leaves(self) -> list:
        inner = set(self.parent)
        return [i for i in range(1, len(self.parent)) if i not in inner]


@dataclass
class TreeBatch(Batch):
    trees: list = None                   # this rank's trees, one per prompt of `Trainer.mine`
    leaf_rewards: list = None            # [L] every leaf's reward, trees in row order (`rewards`: as an array)
    all_adv: list = None                 # every segment's A, kept or not, trees in row order


class TreeTrainer(Trainer):
    """SPO-tree: a step grows one tree per prompt and trains on its segments; no tracker, no drift."""
    Batch = TreeBatch

    def __init__(self, cfg, dist, *rest):
        super().__init__(cfg, dist, *rest)
        self.branching = tree_shape(cfg.tree_branching)                   # children per node at each level
        self.n_prompts = prompts_per_step(cfg)                             # --batch-size counts full-depth leaves
        self.mine = list(range(dist.rank, self.n_prompts, dist.world))   # this rank's trees (prompts)

    # ---- 1. prompts: one tree each, shuffled epochs
    def draw(self, m: dict) -> TreeBatch:
        tasks = [self.train_tasks[i] for i in self.choose(self.n_prompts)]
        return self.Batch(tasks, [t.prompt for t in tasks])

    # ---- 2. the trees, level by level: one engine call a level (the children of every open node at once)
    def collect(self, batch: TreeBatch, step: int, m: dict) -> None:
        cfg, t0, M, T = self.cfg, time.time(), self.cfg.segment_size, self.cfg.temperature
        base, made, batch.trees = cfg.seed * 1_000_003 + step * 10_007, 0, []
        for level, b in enumerate(self.branching):
            last = level == len(self.branching) - 1
            budget = cfg.max_completion_length - level * M if last else M     # the last level runs to the end
            if level == 0:
                reqs = [(t, 0, c) for t in range(len(self.mine)) for c in range(b)]
            else:
                reqs = [(t, n, c) for t, tree in enumerate(batch.trees) for n in tree.open for c in range(b)]
                for tree in batch.trees:
                    tree.open = []
            if not reqs:
                break
            seeds = [base + 7_000_021 * level + 100_003 * self.mine[t] + 1_009 * n + c for t, n, c in reqs]
            kw = dict(seed=seeds[0], seeds=request_seeds(self.engine, cfg.deterministic_generation, seeds))
            if level == 0:
                out = self.engine.generate([self.fmt[batch.keys[self.mine[t]]] for t, _, _ in reqs], budget, T, **kw)
                batch.trees = [Tree(out[t * b].prompt_ids) for t in range(len(self.mine))]
            else:
                out = self.engine.generate_ids([batch.trees[t].prompt_ids + batch.trees[t].path(n) for t, n, _ in reqs],
                                               budget, T, **kw)
            for (t, n, _), s in zip(reqs, out):
                batch.trees[t].add(n, s, expand=s.finish_reason == "length" and not last)
            made += sum(len(s.completion_ids) for s in out)
        m["time/generate"] = time.time() - t0
        m["tokens/generated"] = sum(self.dist.gather(made))
        self.engine.sleep()

    # ---- 3. leaves' rewards, tree values and advantages; the segments with A != 0 become the batch's rows
    def advantages(self, batch: TreeBatch, m: dict) -> None:
        mine = []                            # this rank's trees: (prompt's row, leaves' rewards, every A, kept rows)
        for tree, j in zip(batch.trees, self.mine):
            r = [None] * len(tree.parent)
            for i in tree.leaves():
                r[i] = self.reward_fn(self.tok.decode(tree.path(i), skip_special_tokens=True), batch.tasks[j].answer)
            adv = tree_advantages(tree.parent, tree_values(tree.parent, r), std=self.cfg.tree_std)   # [nodes]
            tokens = [[]] + [s.completion_ids for s in tree.samples[1:]]
            rows = [(Sample(tree.prompt_ids + prefix, ids, tree.samples[i].logprobs, tree.samples[i].finish_reason,
                            tree.samples[i].text), a) for i, prefix, ids, a in tree_segments(tree.parent, tokens, adv)]
            mine.append((j, [r[i] for i in tree.leaves()], adv[1:], rows))
        trees = sorted((x for part in self.dist.gather(mine) for x in part), key=lambda x: x[0])   # as one process
        everyone = [row for *_, rows in trees for row in rows]
        batch.samples = [s for s, _ in everyone[self.dist.rank::self.dist.world]]   # re-dealt: row j on rank j % W
        batch.adv = torch.tensor([a for _, a in everyone], dtype=torch.float32)     # [N] one per trained segment
        batch.leaf_rewards = [x for _, r, _, _ in trees for x in r]
        batch.rewards = np.array(batch.leaf_rewards)
        batch.all_adv = [a for _, _, adv, _ in trees for a in adv]

    def old_logprobs(self, batch: TreeBatch, m: dict) -> None:
        if batch.samples:
            super().old_logprobs(batch, m)
        else:                                # this rank holds none of the step's trained segments
            batch.old_logp, batch.old_valid = torch.zeros(0, 1), []

    def update(self, batch: TreeBatch, step: int, m: dict) -> None:
        if len(batch.adv):                   # every segment's A is 0 (all leaves agree): nothing to train
            super().update(batch, step, m)

    def row_advantages(self, batch: TreeBatch, rows: list, width: int) -> torch.Tensor:
        return batch.adv[[self.dist.rank + i * self.dist.world for i in rows]]      # [b] this rank's rows

    def shown(self, batch: TreeBatch) -> tuple:
        tree = batch.trees[0]
        leaf = tree.leaves()[0]
        return self.tok.decode(tree.path(leaf), skip_special_tokens=True), batch.leaf_rewards[0], batch.tasks[0]

    def summarise(self, batch: TreeBatch, m: dict) -> None:
        gather = lambda xs: [x for part in self.dist.gather(xs) for x in part]        # noqa: E731
        mine = [(t, i) for t in batch.trees for i in t.leaves()]
        lens = np.array(gather([len(t.path(i)) for t, i in mine]))
        stopped = np.array(gather([t.samples[i].finish_reason == "stop" for t, i in mine]))
        depth = np.array(gather([t.level[i] for t, i in mine]))
        per_level = np.array(gather([[t.level.count(k + 1) for k in range(len(self.branching))]
                                     for t in batch.trees])).reshape(-1, len(self.branching))
        r, a = batch.rewards, np.array(batch.all_adv)
        m.update({
            "reward": float(r.mean()),
            **{f"tree/nodes_l{k + 1}": float(per_level[:, k].mean()) for k in range(len(self.branching))},
            "tree/leaves": float(len(r) / len(per_level)),            # per tree; at most the branchings' product
            "tree/finished_leaves": float(stopped.sum() / len(per_level)),   # ... ended by end-of-sequence
            "tree/early_leaves": float(np.mean(depth < len(self.branching))),    # share ended above the last level
            "tree/segments_trained": len(batch.adv),
            "tree/dropped_share": float(np.mean(a == 0)),             # segments with A = 0, not trained
            "adv/raw_var": float(np.var(a)),
            "adv/noBaseline_var": float(np.var(r)),
            "adv/near_zero_0.02": float(np.mean(np.abs(a) < 0.02)),
            "adv/near_zero_1e-4": float(np.mean(np.abs(a) < 1e-4)),
            "tracker/brier": float("nan"),
            "response_length": float(lens.mean()),
            "truncation_rate": float(np.mean(~stopped)),
            "tokens_per_s": float(m["tokens/generated"] / max(m["time/generate"], 1e-9)),
            "reward_errors": self.reward_fn.errors,
        })
