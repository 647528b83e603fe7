"""SPO in one page: tracker.py + sampler.py + spo.py on a toy policy, the porting pattern at its simplest.

    python examples/minimal_spo.py          # a few seconds on a CPU

The "policy" answers each of P prompts right with probability sigmoid(theta_x): one logit per prompt, a
response is one token (right or wrong), reward = 1 if right. Everything SPO needs from a trainer is here in
the order an LLM trainer does it (trainer.py's phases; docs/porting.md explains each):
  0. offline init: n0 samples per prompt with the initial policy            (Eq. 6)
  1. read v_hat of every prompt *before* this step's rewards                 (Eq. 8 needs v_hat_{-1})
  2. draw B distinct prompts with weights sqrt(v(1-v)) + 0.05                 (Eq. 11)
  3. ONE response per prompt, its reward in [0, 1]
  4. A = r - v_hat_{-1}, normalised over the batch                            (Eq. 8-9)
  5. drift D: the prompt's previous response, re-scored by the policy now     (Sec. 4.1)
  6. PPO-clip update                                                          (Eq. 10)
  7. tracker update with rho from D; store this step's responses for next time (Eq. 5)
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampler import PrioritizedSampler, priority_weights  # noqa: E402
from spo import policy_drift, policy_loss, spo_advantages  # noqa: E402
from tracker import ValueTracker  # noqa: E402

P, B, STEPS, N0 = 64, 16, 60, 8                            # prompts, batch, steps, offline samples per prompt
gen = torch.Generator().manual_seed(0)
theta = torch.linspace(-3.0, 1.0, P).requires_grad_()      # [P] hard ... easy prompts
opt = torch.optim.Adam([theta], lr=0.1)
keys = [f"prompt {i}" for i in range(P)]                   # the tracker keys on the raw prompt text


def sample(idx):                                           # one response per prompt: y, log pi(y | x)
    with torch.no_grad():
        y = torch.rand(len(idx), generator=gen) < torch.sigmoid(theta[idx])
    return y, logprob(idx, y).detach()


def logprob(idx, y):                                       # [n] log pi(y | x) under the current policy
    return torch.nn.functional.logsigmoid(torch.where(y, theta[idx], -theta[idx]))


tracker, sampler, stored = ValueTracker(), PrioritizedSampler(seed=0), {}
all_idx = torch.arange(P).repeat_interleave(N0)            # 0. offline init (Eq. 6)
y0, _ = sample(all_idx)
tracker.init_from_offline(keys, y0.float().view(P, N0).numpy())
print(f"start: mean success {torch.sigmoid(theta).mean():.3f}, tracker {tracker}")

for step in range(1, STEPS + 1):
    v = tracker.value(keys)                                # 1. [P] v_hat_{-1}, read before any update
    idx = sampler.sample(priority_weights(v), B)           # 2. [B] distinct prompts (Eq. 11)
    y, old_logp = sample(torch.as_tensor(idx))             # 3. [B] one response each, pi_old
    r = y.double()                                         #    reward in {0, 1}
    adv = spo_advantages(r, v[idx])                        # 4. [B] Eq. 8-9
    drift = np.zeros(B)                                    # 5. D = |log pi_then(y') - log pi_now(y')| on the
    for j, i in enumerate(idx):                            #    previous response y' (0 on a first visit)
        if keys[i] in stored:
            y_prev, lp_then = stored[keys[i]]
            now = logprob(torch.tensor([i]), torch.tensor([y_prev])).detach()
            drift[j] = policy_drift(torch.tensor([[lp_then]]), now[:, None], torch.ones(1, 1)).item()
    for mb in np.array_split(np.arange(B), 2):             # 6. PPO-clip, two mini-batches (Eq. 10)
        t = torch.as_tensor(idx[mb])
        loss, _ = policy_loss(logprob(t, y[mb])[:, None], old_logp[mb, None], adv[mb], torch.ones(len(mb), 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tracker.update([keys[i] for i in idx], r.numpy(), drift)   # 7. Eq. 5, after the advantages used v_hat_{-1}
    for j, i in enumerate(idx):
        stored[keys[i]] = (bool(y[j]), float(old_logp[j]))  # the response and its score, for the next visit
    if step % 20 == 0:
        print(f"step {step}: reward {r.mean():.3f}, mean success {torch.sigmoid(theta).mean():.3f}, "
              f"mean D {drift.mean():.4f}, tracker {tracker}")

state = {"tracker": tracker.state_dict(), "sampler": sampler.state_dict()}   # checkpoint beside the model's
print(f"final mean success {torch.sigmoid(theta).mean():.3f}; checkpoint state: {len(json.dumps(state))} bytes of JSON")
