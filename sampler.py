"""Prioritised prompt sampling: SPO's adaptive curriculum (paper §4.3, Eq. 11).

Copy this file alone into any trainer: it needs numpy and nothing from this project.

Each step, every prompt in the pool gets the weight

    w(x) = sqrt(v_hat(x) * (1 - v_hat(x))) + epsilon,     epsilon = 0.05         (Eq. 11)

the Bernoulli standard deviation of its tracked success rate, largest for prompts the policy solves
about half the time; epsilon keeps solved and hopeless prompts reachable.

CODE!=PAPER: the official code draws the batch *without replacement*
(`np.random.choice(M, B, replace=False, p=w/sum(w))`), so no prompt appears twice in a step and the
inclusion probabilities are not exactly proportional to w. We draw from the same distribution
(successive weighted draws without replacement) in O(M) by an exponential race: each prompt gets
E_i / w_i with E_i ~ Exp(1), and the B smallest win (Efraimidis & Spirakis, 2006). The first winner
is prompt i with probability w_i / sum(w), the second is drawn likewise from the rest, and so on.
"""
from __future__ import annotations

import numpy as np


def priority_weights(values, epsilon: float = 0.05) -> np.ndarray:
    """w = sqrt(v_hat * (1 - v_hat)) + epsilon  (Eq. 11), for an array of tracked values in [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~((v >= 0) & (v <= 1)))
    if bad.size:
        raise ValueError(f"value at index {bad[0]} is {v.flat[bad[0]]}: values must lie in [0, 1]")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    return np.sqrt(v * (1.0 - v)) + epsilon


class PrioritizedSampler:
    """Draws batches of prompt indices, weighted (SPO) or epoch-shuffled (GRPO), from a seeded RNG."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.queue, self.n = [], 0          # shuffled(): the rest of the current epoch, and its pool size

    def sample(self, weights, batch_size: int) -> np.ndarray:
        """`batch_size` distinct indices into `weights`, drawn without replacement, probability ∝ w.

        Returned in draw order (the first index is the first draw). Weights must be finite and > 0:
        a zero weight would silently never be trained on, so it raises instead.
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"weights must be 1-D, got shape {w.shape}")
        bad = np.flatnonzero(~(np.isfinite(w) & (w > 0)))
        if bad.size:
            raise ValueError(f"weight at index {bad[0]} is {w[bad[0]]}: weights must be finite and > 0")
        self._check_size(w.size, batch_size)
        keys = self.rng.standard_exponential(w.size) / w        # [M] race times, smaller wins
        top = np.argpartition(keys, batch_size - 1)[:batch_size] if batch_size < w.size else np.arange(w.size)
        return top[np.argsort(keys[top], kind="stable")]         # [B] in draw order

    def shuffled(self, n: int, batch_size: int, exclude=()) -> np.ndarray:
        """`batch_size` distinct indices from range(n) as a shuffled dataloader draws them (GRPO; TRL's
        RepeatSampler, verl): each epoch is a fresh permutation of the pool taken in order, so every prompt
        is drawn once before any is drawn twice. Indices in `exclude` (in flight, continuous collection)
        are passed over and stay at the front of the queue; so does an index the batch already holds when
        a batch straddles two epochs. A new pool size starts a new epoch."""
        excl = {int(i) for i in exclude if 0 <= int(i) < n}
        self._check_size(n - len(excl), batch_size)
        if n != self.n:
            self.queue, self.n = [], n
        picked, kept, i = [], [], 0
        while len(picked) < batch_size:
            if i == len(self.queue):
                self.queue += self.rng.permutation(n).tolist()          # the next epoch
            j, i = self.queue[i], i + 1
            if j in excl:
                kept.append(j)
            else:
                excl.add(j)                                             # in this batch now: a later copy waits
                picked.append(j)
        self.queue = kept + self.queue[i:]
        return np.array(picked)

    @staticmethod
    def _check_size(n: int, batch_size: int) -> None:
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size={batch_size} needs 1 <= batch_size <= pool size ({n} prompts); "
                             "lower the batch size or add prompts")

    def state_dict(self) -> dict:
        """RNG state and epoch queue (plain JSON-able dict): a restored sampler draws the same batches."""
        return {"rng": self.rng.bit_generator.state, "queue": list(self.queue), "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.queue, self.n = [int(i) for i in state["queue"]], int(state["n"])
