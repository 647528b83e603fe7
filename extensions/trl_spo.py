"""SPO inside TRL's GRPOTrainer: one response per prompt, the tracker's baseline, Eq. 11's draw (trl==1.16.0).

A TRL user swaps two names and keeps the rest (model, reward_funcs, a dataset with a `prompt` column,
peft_config, report_to, vLLM colocate):

    from extensions.trl_spo import SPOConfig, SPOTrainer           # instead of GRPOConfig, GRPOTrainer
    args = SPOConfig(output_dir="runs/trl-spo", per_device_train_batch_size=8, steps_per_generation=2)
    trainer = SPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, peft_config=lora)
    trainer.train()                                                # trainer.train(resume_from_checkpoint=True)

The method is the project's three copyable files, unmodified: tracker.py (v_hat, Eq. 5-6), sampler.py (Eq. 11),
spo.py (Eq. 8-9 and the drift D). TRL keeps its generation, reward calls, PPO loss and optimizer. What this
module overrides in TRL, and why (tests/test_trl_spo.py fails when the pinned TRL moves under them):

- `SPOConfig.__post_init__`: GRPOConfig refuses num_generations < 2; SPO samples one response per prompt.
- `_prepare_inputs`: when TRL is about to generate, the prompts are drawn now from the tracker's current values
  (Eq. 11, without replacement), instead of the batch TRL's sampler built in advance; its dataloader only
  counts steps. The first call runs the offline init (Eq. 6), or reads `spo_offline_values`.
- `_calculate_rewards`: keeps the gathered rewards for the tracker and refuses one outside [0, 1].
- `_generate_and_score_completions`: replaces GRPO's group-mean advantages with A = r - v_hat_{-1} normalised
  over the global batch (Eq. 8-9), measures D on each prompt's stored previous response (one no-grad pass with
  TRL's own scorer, `_get_per_token_logps_and_entropies`) and updates the tracker (Eq. 5, rho from D).
- `_save_checkpoint`, `_load_optimizer_and_scheduler`: tracker, sampler and stored responses in
  `spo_state.pt` beside TRL's checkpoint files, read back on resume.

D is measured as `--drift-at sampling` in train.py (the policy sampling now against the one that sampled the
stored response); the tracker is updated right after this batch's advantages are taken, which is the same as
after the update since nothing reads it in between. Differences from this project's trainer: docs/porting.md.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer

from sampler import PrioritizedSampler, priority_weights
from spo import policy_drift, spo_advantages
from tracker import ValueTracker

STATE = "spo_state.pt"


@dataclass
class SPOConfig(GRPOConfig):
    """GRPOConfig with one response per prompt, Clip-Higher, and the tracker's and sampler's settings (the paper's)."""
    num_generations: int | None = field(default=1, metadata={"help": "SPO: one response per prompt"})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Clip-Higher's upper clip (Eq. 10)"})
    spo_offline_samples: int = field(default=8, metadata={"help": "n0 of Eq. 6; 0: the prior (alpha = beta = 0.5)"})
    spo_offline_values: str | None = field(default=None, metadata={
        "help": "offline_values.json ({prompt: [rewards]}) of an earlier run instead of sampling n0"})
    spo_rho_min: float = field(default=0.875, metadata={"help": "the tracker's forgetting factor, lower bound (Eq. 5)"})
    spo_rho_max: float = field(default=0.96, metadata={"help": "... upper bound (Eq. 5)"})
    spo_d_half: float = field(default=0.06, metadata={"help": "the drift's half-life D_half (Eq. 5)"})
    spo_sampling_epsilon: float = field(default=0.05, metadata={"help": "Eq. 11's exploration floor"})

    def __post_init__(self):
        n, self.num_generations = self.num_generations, 2       # GRPOConfig's "at least 2 generations" check
        super().__post_init__()
        self.num_generations = n
        need = [(n == 1, f"num_generations must be 1 (one response per prompt), got {n}"),
                (self.spo_offline_samples >= 0, f"spo_offline_samples must be >= 0, got {self.spo_offline_samples}"),
                (0 < self.spo_rho_min <= self.spo_rho_max < 1, "spo_rho_min <= spo_rho_max must lie in (0, 1), got "
                 f"{self.spo_rho_min}, {self.spo_rho_max}"),
                (self.spo_d_half > 0 and self.spo_sampling_epsilon >= 0, "spo_d_half must be > 0 and "
                 "spo_sampling_epsilon >= 0"),
                (not self.spo_offline_values or os.path.isfile(self.spo_offline_values), f"spo_offline_values "
                 f"{self.spo_offline_values!r} is not a file; pass the offline_values.json of an earlier run or None"),
                (self.save_strategy != "steps" or self.save_steps % self.steps_per_generation == 0, f"save_steps "
                 f"{self.save_steps} must be a multiple of steps_per_generation {self.steps_per_generation}, so a "
                 "checkpoint falls between two batches and a resume continues exactly")]
        for ok, msg in need:
            if not ok:
                raise ValueError(f"SPOConfig: {msg}")


def prompt_key(prompt) -> str:
    """The tracker's key of a dataset row's `prompt`: the text, or a conversation's last message's content."""
    return prompt if isinstance(prompt, str) else str(prompt[-1]["content"])


class SPOTrainer(GRPOTrainer):
    """GRPOTrainer training with SPO: see the module's docstring for what is overridden and why."""

    def __init__(self, *args, train_dataset=None, **kw):
        if not isinstance(kw.get("args"), SPOConfig):
            raise ValueError("SPOTrainer: pass args=SPOConfig(...) (a GRPOConfig samples groups)")
        if train_dataset is None or "prompt" not in train_dataset.column_names:
            raise ValueError("SPOTrainer: train_dataset needs a 'prompt' column (the tracker keys on it)")
        self.spo_keys = [prompt_key(p) for p in train_dataset["prompt"]]
        seen = set()
        for i, k in enumerate(self.spo_keys):
            if k in seen:
                raise ValueError(f"SPOTrainer: row {i} repeats the prompt {k[:80]!r}; the tracker keys on the prompt "
                                 "text, so each problem must appear once (drop duplicates first)")
            seen.add(k)
        if kw["args"].generation_batch_size > len(self.spo_keys):
            raise ValueError(f"SPOTrainer: a batch draws {kw['args'].generation_batch_size} distinct prompts "
                             f"(generation_batch_size) but train_dataset has {len(self.spo_keys)}")
        super().__init__(*args, train_dataset=train_dataset, **kw)
        a = self.args
        self.tracker = ValueTracker(a.spo_rho_min, a.spo_rho_max, a.spo_d_half)
        self.spo_sampler = PrioritizedSampler(a.seed)           # the same seed on every rank: the same draws
        self.stored: dict[str, tuple] = {}                     # key -> (prompt ids, completion ids, pi_old log-probs)
        self.spo_ready = False                                 # the offline init has run (or a checkpoint loaded)
        self.spo_drawn: list[int] = []                         # this batch's prompt indices, global, in rank order
        self.spo_rewards = None                                # [B] this batch's rewards, gathered
        self.spo_offline_s = 0.0                               # seconds the offline init took (inside train())

    # ---- Eq. 11: draw the prompts when TRL is about to generate
    def _prepare_inputs(self, generation_batch):
        due = self._step % (self.args.steps_per_generation * self.num_iterations) == 0 or self._buffered_inputs is None
        if self.model.training and due:
            if not self.spo_ready:
                self.spo_offline_init()
            b = len(generation_batch)                           # this rank's rows: per_device x steps_per_generation
            B, rank = b * self.accelerator.num_processes, self.accelerator.process_index
            v = self.tracker.value(self.spo_keys)                                           # [M] v_hat
            self.spo_drawn = self.spo_sampler.sample(priority_weights(v, self.args.spo_sampling_epsilon), B).tolist()
            generation_batch = [self.train_dataset[i] for i in self.spo_drawn[rank * b:(rank + 1) * b]]
        return super()._prepare_inputs(generation_batch)

    # ---- the rewards, kept for the tracker
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)    # [B, F] gathered
        r = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        bad = torch.isnan(per_func).all(dim=1) | (r < 0) | (r > 1)
        if self.model.training and bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"SPOTrainer: a response scored {r[i].item()!r} (reward_funcs x reward_weights); the "
                             "tracker's Beta counts need every reward in [0, 1]: rescale the reward functions or "
                             "their weights so the weighted sum stays in [0, 1] (docs/porting.md)")
        self.spo_rewards = r.float().cpu().numpy()
        return per_func

    # ---- Eq. 8-9 advantages, the drift D and the tracker (Eq. 5)
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:                            # evaluation: TRL's own
            return out
        rank, b = self.accelerator.process_index, len(inputs)
        keys = [self.spo_keys[i] for i in self.spo_drawn]                                  # [B] global
        r = self.spo_rewards                                                               # [B]
        v_prev = self.tracker.value(keys)                                                  # v_hat_{-1}
        adv = spo_advantages(r, v_prev)                                                    # [B] Eq. 8-9
        out["advantages"] = adv[rank * b:(rank + 1) * b].to(out["advantages"])
        d, new = self.spo_drift(keys[rank * b:(rank + 1) * b], out)                        # this rank's rows
        d, new = np.array(gather_object(d)), gather_object(new)                            # [B], every rank all
        first = np.array([k not in self.stored for k in keys])
        rho = self.tracker.update(keys, r, d)                                              # Eq. 5
        self.stored.update(zip(keys, new))
        m = self._metrics["train"]
        raw, nob = r - v_prev, r
        for name, x in (("spo/rho_mean", rho.mean()), ("spo/drift_mean", d[~first].mean() if (~first).any() else 0.0),
                        ("spo/first_visit_share", first.mean()), ("adv/raw_var", raw.var()),
                        ("adv/noBaseline_var", nob.var()), ("tracker/brier", np.mean((v_prev - r) ** 2))):
            m[name].append(float(x))
        return out

    def spo_drift(self, keys: list, out: dict) -> tuple[list, list]:
        """D per row (spo.policy_drift: the stored pi_old of the prompt's last response against the policy sampling
        now) and the rows' new stored entries (this response with its pi_old): one no-grad pass over the stored
        responses and, where TRL did not compute pi_old, this batch's."""
        pmask, cmask = out["prompt_mask"].bool(), out["completion_mask"].bool()
        rows = [(out["prompt_ids"][i][pmask[i]].tolist(), out["completion_ids"][i][cmask[i]].tolist())
                for i in range(len(keys))]
        prev = [self.stored.get(k) for k in keys]
        old = out.get("old_per_token_logps")
        todo = [p[:2] for p in prev if p is not None] + (rows if old is None else [])
        now = self.spo_score(todo)
        seen = [i for i, p in enumerate(prev) if p is not None]
        d = [0.0] * len(keys)
        if seen:
            T = max(len(prev[i][1]) for i in seen)
            then, mask = torch.zeros(len(seen), T), torch.zeros(len(seen), T)              # [n_seen, T]
            for k, i in enumerate(seen):
                n = len(prev[i][1])
                then[k, :n], mask[k, :n] = torch.tensor(prev[i][2]), 1.0
            nowT = torch.stack([torch.nn.functional.pad(x, (0, T - len(x))) for x in now[:len(seen)]])
            for k, x in zip(seen, policy_drift(then, nowT, mask).tolist()):
                d[k] = x
        if old is None:
            logps = [x.tolist() for x in now[len(seen):]]
        else:
            logps = [old[i][:len(c)].float().tolist() for i, (_, c) in enumerate(rows)]
        return d, [(p, c, lp) for (p, c), lp in zip(rows, logps)]

    def spo_score(self, rows: list) -> list:
        """The current policy's log-probs of (prompt ids, completion ids) rows, TRL's scorer, no gradient."""
        if not rows:
            return []
        pad = self.processing_class.pad_token_id if hasattr(self.processing_class, "pad_token_id") else 0
        P, C = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
        ids = torch.tensor([[pad] * (P - len(p)) + p + c + [pad] * (C - len(c)) for p, c in rows])  # [n, P + C]
        att = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (C - len(c)) for p, c in rows])
        with torch.no_grad():
            lp, _, _ = self._get_per_token_logps_and_entropies(self.model, ids.to(self.accelerator.device),
                                                              att.to(self.accelerator.device), C,
                                                              self.args.per_device_train_batch_size)   # [n, C]
        return [lp[i, :len(c)].float().cpu() for i, (_, c) in enumerate(rows)]

    # ---- Eq. 6: n0 samples per prompt with the initial policy, through TRL's own generation and rewards
    def spo_offline_init(self) -> None:
        a = self.args
        self.spo_ready = True                                  # whatever follows: a resume does not run it again
        if a.spo_offline_values:
            with open(a.spo_offline_values) as f:
                table = json.load(f)
            keys = [k for k in self.spo_keys if k in table]
            if not keys:
                raise ValueError(f"spo_offline_values {a.spo_offline_values}: none of its {len(table)} prompts is a "
                                 "training prompt (keys must equal the prompt text exactly)")
            self.tracker.init_from_offline(keys, [table[k] for k in keys])
            return
        if a.spo_offline_samples == 0:
            return
        world, rank, n0 = self.accelerator.num_processes, self.accelerator.process_index, a.spo_offline_samples
        t0 = time.time()
        saved = copy.deepcopy((self._metrics, self._logs))     # TRL logs what it generates; these are not training
        rows = [i for i in range(len(self.spo_keys)) for _ in range(n0)]
        chunk, rewards = a.generation_batch_size, []
        for s in range(0, len(rows), chunk):
            part = rows[s:s + chunk]
            per = -(-len(part) // world)
            mine = (part + part[:1] * (per * world - len(part)))[rank * per:(rank + 1) * per]   # even shares
            GRPOTrainer._generate_and_score_completions(self, [self.train_dataset[i] for i in mine])
            rewards += self.spo_rewards[:len(part)].tolist()   # gathered in rank order: the padded chunk's
        self._metrics, self._logs = saved
        table = {k: rewards[i * n0:(i + 1) * n0] for i, k in enumerate(self.spo_keys)}
        if self.accelerator.is_main_process:
            os.makedirs(a.output_dir, exist_ok=True)
            with open(os.path.join(a.output_dir, "offline_values.json"), "w") as f:
                json.dump(table, f)
        self.tracker.init_from_offline(list(table), list(table.values()))
        self.spo_offline_s = time.time() - t0

    # ---- checkpoints: the tracker, the sampler and the stored responses beside TRL's files
    def spo_state(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "sampler": self.spo_sampler.state_dict(),
                "stored": self.stored, "ready": self.spo_ready}

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            torch.save(self.spo_state(), os.path.join(folder, STATE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, STATE)
            if not os.path.exists(path):
                raise ValueError(f"SPOTrainer: {checkpoint} has no {STATE}; it was not written by SPOTrainer")
            state = torch.load(path, weights_only=False)
            self.tracker.load_state_dict(state["tracker"])
            self.spo_sampler.load_state_dict(state["sampler"])
            self.stored, self.spo_ready = state["stored"], state["ready"]
