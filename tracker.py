"""KL-adaptive Beta value tracker: the persistent per-prompt baseline of SPO (paper §4.1, Eq. 5-7).

Copy this file alone into any trainer: it needs numpy and nothing from this project.

Per prompt x we keep two pseudo-counts, alpha(x) and beta(x), of a Beta posterior over the prompt's
success probability. The baseline for the advantage (Eq. 8) is the posterior mean

    v_hat(x) = alpha / (alpha + beta)

and after a new reward r in [0, 1] the counts are first *decayed*, then incremented (Eq. 5):

    alpha <- rho * alpha + r,     beta <- rho * beta + (1 - r)
    rho   =  clamp(2^(-D / D_half), rho_min, rho_max)

where D is the drift of the policy since the prompt was last visited. The effective sample size
N_eff = alpha + beta settles at 1 / (1 - rho), a window of 8 (rho_min) to 25 (rho_max) visits.

Official code vs paper (volcengine/verl recipe/spo), followed here and marked CODE!=PAPER:
- D_half = 0.06 (the paper gives no value); D is the mean |delta log-prob| (see spo.policy_drift),
  measured by the code between post-update policies (the paper: "the last policy that acted on x" and
  the current one; the trainer's --drift-at picks either, the tracker only sees D).
- A first visit has no previous response, so D = 0 and rho = rho_max = 0.96.
- Offline init (Eq. 6) uses a Jeffreys-smoothed mean v0 = (s + 0.5) / (n0 + 1) instead of s / n0,
  so v_hat is never exactly 0 or 1 and sampling weights (Eq. 11) never collapse.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import numpy as np

PRIOR = 0.5  # alpha = beta = 0.5 for a prompt never seen offline (the code's `offline_N = 0`)


def rho_from_drift(drift, d_half: float = 0.06, rho_min: float = 0.875, rho_max: float = 0.96):
    """Forgetting factor rho = clamp(2^(-D/D_half), rho_min, rho_max)  (§4.1, below Eq. 5).

    `drift` is a scalar or an array of non-negative drifts D; returns a float or an array.
    With the defaults rho sits at 0.96 for D <= 0.0035 and at 0.875 for D >= 0.0116.
    """
    d = np.asarray(drift, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError(f"drift must be finite and >= 0, got {drift!r}")
    rho = np.clip(np.exp2(-d / d_half), rho_min, rho_max)
    return float(rho) if rho.ndim == 0 else rho


def ema_update(value, n_eff, reward, rho):
    """The adaptive-EMA form of the tracker (Eq. 7), for rewards that are not binary.

        eta = 1 / (rho * N_eff + 1);   v <- v + eta * (r - v);   N_eff <- rho * N_eff + 1

    With N_eff = alpha + beta this equals the alpha/beta update of Eq. 5 for any r in [0, 1]
    (the paper's parenthetical "N_eff = alpha + beta + 1" contradicts its own Eq. 5/7; the code
    uses alpha + beta). Works on floats or numpy arrays; returns (value, n_eff).
    """
    eta = 1.0 / (rho * n_eff + 1.0)
    return value + eta * (reward - value), rho * n_eff + 1.0


class ValueTracker:
    """Per-prompt Beta tracker, keyed by any hashable (the prompt text by default).

    Storage is two float64 arrays plus a key -> slot dict, so reading every value of a 1 M-prompt
    pool (`value()`), or updating a batch, is a vectorised numpy operation.
    """

    def __init__(self, rho_min: float = 0.875, rho_max: float = 0.96, d_half: float = 0.06):
        if not 0.0 < rho_min <= rho_max < 1.0:
            raise ValueError(f"need 0 < rho_min <= rho_max < 1, got rho_min={rho_min}, rho_max={rho_max}")
        if d_half <= 0:
            raise ValueError(f"d_half must be > 0, got {d_half}")
        self.rho_min, self.rho_max, self.d_half = rho_min, rho_max, d_half
        self.keys: list = []           # slot -> key, in insertion order
        self._slot: dict = {}          # key -> slot
        self._alpha = np.zeros(0)      # capacity grows by doubling; only [:len(self)] is live
        self._beta = np.zeros(0)
        self._visits = np.zeros(0, dtype=np.int64)

    # ---------------------------------------------------------------- storage
    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key) -> bool:
        return key in self._slot

    @property
    def alpha(self) -> np.ndarray:
        return self._alpha[: len(self)]

    @property
    def beta(self) -> np.ndarray:
        return self._beta[: len(self)]

    @property
    def visits(self) -> np.ndarray:
        """Training updates seen per slot (offline init does not count)."""
        return self._visits[: len(self)]

    def _grow(self, n: int) -> None:
        if n <= self._alpha.size:
            return
        cap = max(n, 2 * self._alpha.size, 16)
        for name in ("_alpha", "_beta", "_visits"):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, name, new)

    def _slots(self, keys: Sequence[Hashable], create: bool) -> np.ndarray:
        """Slot of each key; unseen keys get new slots at the prior when `create`, else -1."""
        slot, out = self._slot, np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            s = slot.get(k, -1)
            if s < 0 and create:
                s = slot[k] = len(self.keys)
                self.keys.append(k)
                self._grow(len(self.keys))
                self._alpha[s] = self._beta[s] = PRIOR
            out[i] = s
        return out

    # ---------------------------------------------------------------- reading
    def value(self, keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """v_hat = alpha / (alpha + beta) per key, as float64; every tracked prompt if keys is None.

        A key never seen gets the prior alpha = beta = 0.5, i.e. v_hat = 0.5 (it is not stored).
        """
        a, b = self._counts(keys)
        return a / (a + b)

    def effective_size(self, keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """N_eff = alpha + beta per key (1.0 for an unseen key); every tracked prompt if keys is None."""
        a, b = self._counts(keys)
        return a + b

    def _counts(self, keys):
        """(alpha, beta) arrays for keys (the prior for unseen ones), or for every tracked prompt."""
        if keys is None:
            return self.alpha, self.beta
        s = self._slots(keys, create=False)
        seen = s >= 0
        a, b = np.full(s.size, PRIOR), np.full(s.size, PRIOR)
        a[seen], b[seen] = self._alpha[s[seen]], self._beta[s[seen]]
        return a, b

    # ---------------------------------------------------------------- writing
    def init_from_offline(self, keys: Sequence[Hashable], outcomes: Iterable[Sequence[float]]) -> None:
        """Offline initialisation (Eq. 6, Alg. 2) from n0 outcomes per prompt of the initial policy.

        N0 = 1 / (1 - rho_min) = 8 pseudo-counts, split by the smoothed success rate:
            alpha0 = N0 * (s + 0.5) / (n0 + 1),   beta0 = N0 * (n0 - s + 0.5) / (n0 + 1)
        with s = sum of the outcomes and n0 = their number (CODE!=PAPER: the paper writes
        alpha0 = N0 * s / n0). Outcomes may be 0/1 or fractions in [0, 1]. The official code fixes
        n0 = 8 and so counts missing samples as failures; here n0 is each prompt's own count,
        which is the same for the usual 8 samples and unbiased when some are missing.
        Re-initialising a key overwrites its counts and resets its visit count.
        """
        keys = list(keys)
        if isinstance(outcomes, np.ndarray) and outcomes.ndim == 2:   # fast path: [prompts, n0]
            rows = outcomes.astype(np.float64)
        else:
            rows = [np.asarray(o, dtype=np.float64).ravel() for o in outcomes]
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys but {len(rows)} outcome lists")
        n = np.array([len(o) for o in rows], dtype=np.float64)
        s = np.array([o.sum() for o in rows]) if isinstance(rows, list) else rows.sum(1)
        ok = np.array([np.all((o >= 0) & (o <= 1)) for o in rows]) if isinstance(rows, list) \
            else np.all((rows >= 0) & (rows <= 1), axis=1)            # also rejects NaN
        for i in np.flatnonzero((n == 0) | ~ok)[:1]:
            if n[i] == 0:
                raise ValueError(f"prompt {keys[i]!r}: no offline outcomes (drop it, or give it at least one)")
            raise ValueError(f"prompt {keys[i]!r}: offline outcomes must lie in [0, 1], got {rows[i].tolist()}")
        n_init = 1.0 / (1.0 - self.rho_min)
        slots = self._slots(keys, create=True)
        self._alpha[slots] = n_init * (s + 0.5) / (n + 1)
        self._beta[slots] = n_init * (n - s + 0.5) / (n + 1)
        self._visits[slots] = 0

    def update(self, keys: Sequence[Hashable], rewards, drifts=None) -> np.ndarray:
        """Eq. 5: alpha <- rho*alpha + r, beta <- rho*beta + (1 - r) for each (key, reward, drift).

        `drifts` are the per-prompt policy drifts D; None means every prompt is on its first visit
        (D = 0, so rho = rho_max). Returns the rho used for each item. A key that appears twice in
        one call is updated twice, in order. Unseen keys start from the prior (alpha = beta = 0.5).
        Call this *after* the advantages were computed with `value()` (Eq. 8 needs v_hat_{-1}).
        """
        keys = list(keys)
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if r.size != len(keys):
            raise ValueError(f"{len(keys)} keys but {r.size} rewards")
        bad = np.flatnonzero(~((r >= 0) & (r <= 1)))  # NaN fails both comparisons
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"reward for prompt {keys[i]!r} is {r[i]}: the Beta tracker needs rewards in [0, 1]")
        if drifts is None:
            rho = np.full(r.size, self.rho_max)
        else:
            d = np.asarray(drifts, dtype=np.float64).ravel()
            if d.size != len(keys):
                raise ValueError(f"{len(keys)} keys but {d.size} drifts")
            bad = np.flatnonzero(~(np.isfinite(d) & (d >= 0)))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"drift for prompt {keys[i]!r} is {d[i]}: must be finite and >= 0")
            rho = np.atleast_1d(rho_from_drift(d, self.d_half, self.rho_min, self.rho_max))
        slots = self._slots(keys, create=True)
        if np.unique(slots).size == slots.size:       # distinct keys (every SPO batch): one vectorised update
            self._alpha[slots] = rho * self._alpha[slots] + r
            self._beta[slots] = rho * self._beta[slots] + (1.0 - r)
            self._visits[slots] += 1
            return rho
        for s, rho_i, r_i in zip(slots, rho, r):      # a key that appears twice is updated twice, in order
            self._alpha[s] = rho_i * self._alpha[s] + r_i
            self._beta[s] = rho_i * self._beta[s] + (1.0 - r_i)
            self._visits[s] += 1
        return rho

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Plain Python lists and floats: exact under json.dump and torch.save."""
        return {
            "rho_min": self.rho_min, "rho_max": self.rho_max, "d_half": self.d_half,
            "keys": list(self.keys), "alpha": self.alpha.tolist(), "beta": self.beta.tolist(),
            "visits": self.visits.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        keys = list(state["keys"])
        if not len(keys) == len(state["alpha"]) == len(state["beta"]) == len(state["visits"]):
            raise ValueError("tracker state: keys, alpha, beta and visits differ in length")
        self.__init__(state["rho_min"], state["rho_max"], state["d_half"])
        self._slot = {k: i for i, k in enumerate(keys)}
        if len(self._slot) != len(keys):
            raise ValueError("tracker state: duplicate keys")
        self.keys = keys
        self._alpha = np.array(state["alpha"], dtype=np.float64)
        self._beta = np.array(state["beta"], dtype=np.float64)
        self._visits = np.array(state["visits"], dtype=np.int64)

    def __repr__(self) -> str:
        v = self.value()
        mean = f"{v.mean():.3f}" if v.size else "-"
        return f"ValueTracker({len(self)} prompts, mean v_hat {mean}, rho in [{self.rho_min}, {self.rho_max}])"
