"""Continuous, group-free collection: no synchronisation barrier between rollouts (paper §5.4, Fig. 5).

Lock-step collection generates a batch and waits for its longest response; a group method (GRPO) must
in addition wait for every member of a group. SPO has no groups, so it can train on whichever responses
finish first. `ContinuousCollector` keeps about `oversample` x B trajectories in flight on a vLLM engine's
request-level API (add / step / abort, rollout.VLLMEngine) in the trainer's process:

    refill   draw prompts for the free slots, among prompts not already in flight or waiting to be
             trained (one trajectory per prompt at a time), and add one request each
    pump     step the engine; a response that stops at </code> runs its tool call in a thread and
             continues as a new request from its token ids (--tools python); a finished one lands
    batch    B landed trajectories, oldest launched first (GRPO: B/G groups whose every member landed);
             the rest keep running, or wait, and go into a later batch

Off-policy data, explicitly. A carried trajectory keeps the adapter it started with until it finishes
(the engine holds up to max_staleness / updates per step + 2 adapter versions; vLLM batches requests of
several adapters together), so every trajectory has one behaviour policy, and its `opt_step` says which:
the trainer's optimizer-step count when that adapter was made. Its staleness when trained is the number of optimizer
steps since; the loss corrects for it with truncated importance weights (spo.tis_weights, continuous.py).

Staleness is bounded by admission, not by dropping. Dropping what is too stale would bias training toward
fast problems: a problem whose tool calls always take longer than the bound would never be trained on.
So, with u optimizer steps per batch and k = max_staleness // u:
    admit    at most B x (k + 1) trajectories are launched and untrained at any time (the most the bound
             can absorb: trained oldest first, each is in one of the next k + 1 batches)
    oldest   a batch takes the landed trajectories in launch order
    due      a trajectory that the next update would make staler than max_staleness is due: the batch
             waits for it to land (the waiting is logged), however long its tool takes
`max_staleness` stays the hard limit: whatever is staler after an update (a checkpoint restored under a
smaller bound, say) is dropped, in flight (aborted) or landed, and counted.

Bias, measured: `lengths()` gives the mean length, reward, tool seconds and launch-to-land latency of the
trained trajectories and of every one that landed (trained or not); the trainer logs both.

Checkpoints keep the landed, untrained trajectories (samples and all); those in flight or at a tool are
lost at a restart, and `state_dict` says how many.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

from extensions.tools import STOP, ToolTrajectory


@dataclass
class Trajectory:
    idx: int                 # the prompt's index in the pool
    group: int               # launch group: its G members (GRPO) share it; SPO groups have one member
    opt_step: int            # optimizer steps behind the adapter that samples it (its behaviour policy)
    version: int             # that adapter's engine version (kept loaded while the trajectory runs)
    seed: int
    launched: float          # wall-clock time of launch
    tool: object = None      # tools.ToolTrajectory while a tool-integrated response is being built
    sample: object = None    # rollout.Sample once landed
    landed: float = 0.0
    tool_started: float = 0.0


class ContinuousCollector:
    """Trajectories in flight across training steps; `collect` returns the next batch (see the module doc).

    engine: rollout.VLLMEngine (add / step / abort / busy / version); prompts: the pool's prompt token ids;
    tools: a tools.ToolEngine for tool-integrated responses (its sandbox, pool and limits), or None;
    score(idx, sample) -> reward, to log the reward of every landed response (trained or not), or None.
    """

    def __init__(self, engine, prompts: list, max_new_tokens: int, temperature: float, batch_size: int,
                 oversample: float = 1.5, group_size: int = 1, max_staleness: int = 4, seed: int = 0, tools=None,
                 score=None, updates: int = 1):
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.engine, self.prompts, self.tools, self.score = engine, prompts, tools, score
        self.max_new_tokens, self.temperature, self.G = max_new_tokens, temperature, group_size
        self.n_groups = batch_size // group_size                              # groups per batch
        self.max_staleness, self.seed, self.updates = max_staleness, seed, updates  # updates: optimizer steps a batch
        self.target = min(math.ceil(oversample * self.n_groups),             # groups launched and not yet trained,
                          self.n_groups * (max_staleness // updates + 1))     # at most what the bound absorbs
        self.opt_step = 0                        # the trainer's optimizer steps behind the engine's adapter
        self.flight = {}                         # request id -> Trajectory generating in the engine
        self.at_tool = []                        # (future, Trajectory): tool call running
        self.groups = {}                         # group -> its Trajectories (launched, not yet complete)
        self.ready = []                          # complete groups waiting for a batch (taken oldest launched first)
        self.n_launched = self.n_trained = self.n_dropped = self.n_lost = 0
        self.landed = dict.fromkeys(("n", "len", "reward", "tool_s", "latency"), 0.0)   # sums over all landed
        self.waited_due = 0.0                    # seconds the last batch waited for due trajectories
        self._next_group = 0

    # ---- what the trainer calls
    def busy_prompts(self) -> set:
        """Prompts with a trajectory launched and not yet trained: the sampler must not draw them again."""
        return {t.idx for g in self.groups.values() for t in g} | {t.idx for g in self.ready for t in g}

    def collect(self, draw) -> list:
        """The next batch: B trajectories (B/G complete groups, members adjacent), oldest launched first, once
        B have landed and no due one is still running (see the module doc).

        draw(k, busy) -> k prompt indices not in `busy` (the sampler, Eq. 11, restricted to free prompts).
        """
        t_full = None
        while True:
            self._refill(draw)
            if len(self.ready) >= self.n_groups:
                due_ready = sum(self._due(g[0]) for g in self.ready)
                if due_ready >= self.n_groups or not any(self._due(g[0]) for g in self.groups.values()):
                    break
                t_full = t_full or time.time()           # B have landed; a due one is still running
            self._pump()
        self.waited_due = time.time() - t_full if t_full else 0.0
        self.ready.sort(key=lambda g: g[0].group)                             # launch order: oldest first
        batch, self.ready = self.ready[:self.n_groups], self.ready[self.n_groups:]
        out = [t for g in batch for t in g]
        self.n_trained += len(out)
        return out

    def advance(self, opt_step: int) -> int:
        """After an update: the adapter now in the engine was made after `opt_step` optimizer steps. Drop
        every trajectory (in flight, at a tool, or landed) staler than max_staleness; returns how many."""
        self.opt_step = opt_step
        stale = {gid for gid, g in list(self.groups.items()) + [(g[0].group, g) for g in self.ready]
                 if opt_step - g[0].opt_step > self.max_staleness}
        if not stale:
            return 0
        rids = [rid for rid, t in self.flight.items() if t.group in stale]
        self.engine.abort(rids)
        for rid in rids:
            del self.flight[rid]
        self.at_tool = [(f, t) for f, t in self.at_tool if t.group not in stale]   # their results are ignored
        n = sum(len(self.groups.pop(gid)) for gid in stale if gid in self.groups)
        n += sum(len(g) for g in self.ready if g[0].group in stale)
        self.ready = [g for g in self.ready if g[0].group not in stale]
        self.n_dropped += n
        return n

    def versions_in_use(self) -> set:
        """Adapter versions that running trajectories still sample with (the engine keeps them loaded)."""
        return {t.version for g in self.groups.values() for t in g}

    def lengths(self, batch: list) -> dict:
        """Means over this batch (trained) and over every trajectory landed so far, trained or not: response
        length, reward (landed only: the trainer logs the batch's), tool seconds, launch-to-land latency.
        Fast finishers are trained first; this is that bias, measured."""
        n, b = max(self.landed["n"], 1), max(len(batch), 1)
        return {"collect/len_trained": sum(len(t.sample.completion_ids) for t in batch) / b,
                "collect/tool_s_trained": sum((t.sample.info or {}).get("tool_s", 0.0) for t in batch) / b,
                "collect/latency_trained": sum(t.landed - t.launched for t in batch) / b,
                "collect/waited_due_s": self.waited_due,
                **{f"collect/{k}_landed": self.landed[k] / n for k in ("len", "reward", "tool_s", "latency")}}

    def in_flight(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def close(self) -> int:
        """Abort everything still running (end of training); returns how many trajectories that was."""
        n = self.in_flight()
        self.engine.abort(list(self.flight))
        self.flight, self.at_tool, self.groups = {}, [], {}
        self.n_lost += n
        return n

    # ---- checkpoints: landed trajectories are kept, those still running are lost (and counted)
    def state_dict(self) -> dict:
        return {"ready": self.ready, "opt_step": self.opt_step, "lost_at_save": self.in_flight(),
                "counts": (self.n_launched, self.n_trained, self.n_dropped, self.n_lost + self.in_flight()),
                "landed": self.landed, "next_group": self._next_group}

    def load_state_dict(self, state: dict) -> int:
        """Restore; returns how many trajectories were in flight at the save (lost: they are not resumed)."""
        self.ready, self.opt_step, self._next_group = state["ready"], state["opt_step"], state["next_group"]
        self.n_launched, self.n_trained, self.n_dropped, self.n_lost = state["counts"]
        self.landed = state["landed"]
        for g in self.ready:                     # the new engine numbers its adapters afresh
            for t in g:
                t.version = 0
        return state["lost_at_save"]

    # ---- inside
    def _due(self, t: Trajectory) -> bool:
        """Would the next update (`updates` optimizer steps) leave this trajectory staler than the bound?"""
        return self.opt_step + self.updates - t.opt_step > self.max_staleness

    def _refill(self, draw) -> None:
        free = self.target - len(self.groups) - len(self.ready)
        if free <= 0:
            return
        for idx in draw(free, self.busy_prompts()):
            gid, self._next_group = self._next_group, self._next_group + 1
            members = []
            for k in range(self.G):
                t = Trajectory(int(idx), gid, self.opt_step, self.engine.version,
                               seed=self.seed * 1_000_003 + gid * 101 + k, launched=time.time())
                if self.tools is not None:
                    t.tool = ToolTrajectory(self.prompts[idx], self.max_new_tokens)
                self._launch(t, self.prompts[idx], self.max_new_tokens, t.seed)
                members.append(t)
            self.groups[gid] = members
            self.n_launched += self.G

    def _launch(self, t: Trajectory, prompt_ids: list, budget: int, seed: int) -> None:
        stop = STOP if self.tools is not None else None
        rid = self.engine.add(prompt_ids, budget, self.temperature, seed, stop=stop, version=t.version)
        self.flight[rid] = t

    def _pump(self) -> None:
        """One engine step; tool calls that finished continue their trajectories; finished ones land."""
        for f, t in [x for x in self.at_tool if x[0].done()]:
            self.at_tool.remove((f, t))
            if t.tool.add_output(f.result(), self.tools.tok, self.tools.max_chars, time.time() - t.tool_started):
                k = t.tool.turns
                self._launch(t, t.tool.prompt + t.tool.ids, t.tool.left(), t.seed + 1_000_003 * k)
            else:
                self._land(t, t.tool.sample(self.tools.tok))
        if not self.engine.busy():
            if not self.at_tool:
                raise RuntimeError("continuous collection: nothing in flight and no free prompt to launch "
                                   "(the pool must hold more prompts than oversample x batch)")
            wait([f for f, _ in self.at_tool], return_when=FIRST_COMPLETED)   # only tools running: wait
            return
        for rid, s in self.engine.step():
            t = self.flight.pop(rid, None)
            if t is None:                        # aborted meanwhile
                continue
            if t.tool is None:
                self._land(t, s)
                continue
            code = t.tool.add_turn(s, self.tools.tok, self.tools.max_turns)
            if code is None:
                self._land(t, t.tool.sample(self.tools.tok))
            else:
                t.tool_started = time.time()
                self.at_tool.append((self.tools.pool.submit(self.tools.run, code), t))

    def _land(self, t: Trajectory, sample) -> None:
        t.sample, t.landed = sample, time.time()
        for k, x in (("n", 1), ("len", len(sample.completion_ids)), ("tool_s", (sample.info or {}).get("tool_s", 0.0)),
                     ("latency", t.landed - t.launched), ("reward", self.score(t.idx, sample) if self.score else 0.0)):
            self.landed[k] += x
        g = self.groups[t.group]
        if all(m.sample is not None for m in g):
            self.ready.append(self.groups.pop(t.group))
