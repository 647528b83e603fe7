"""Trainer-side scoring: the log-probs the PPO ratio, the drift D and the engine-vs-trainer check use.

- `sequence_logprobs`  log pi(y_t | ...) of given responses under the trainer's policy, length-bucketed
- `policy_mask`, `pad_logprobs`  a batch of Samples as [B, T] tensors
- `check_sync`, `compare_logprobs`  engine vs trainer on the same tokens: an adapter that did not reach the
                       engine shows up at once as a large mismatch (TRL #2698, unsloth-zoo #941)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spo import token_logprobs


def sequence_logprobs(model, prompt_ids: list, completion_ids: list, pad_id: int, temperature: float = 1.0,
                      micro_batch: int = 8):
    """Log-probs of each completion token under `model`, as the trainer sees them.

    Rows of similar length share a micro-batch (sorted by length: padding costs as much as tokens), laid
    out [left pad | prompt | completion | right pad] so every completion of a micro-batch starts at the
    same column and its logits are one slice; only the last T+1 positions go through the LM head.
    Returns (logp [B, T] float32, mask [B, T]) in the input order; differentiable if grad is enabled.
    """
    device = next(model.parameters()).device
    n = len(prompt_ids)
    width = max(max(len(c) for c in completion_ids), 1)                              # T of the result
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(completion_ids[i]))
    rows = [None] * n
    for s in range(0, n, micro_batch):
        idx = order[s:s + micro_batch]
        ps, cs = [prompt_ids[i] for i in idx], [completion_ids[i] for i in idx]
        p_len, t_len = max(len(p) for p in ps), max(max(len(c) for c in cs), 1)
        ids = torch.full((len(ps), p_len + t_len), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, (p, c) in enumerate(zip(ps, cs)):
            ids[i, p_len - len(p):p_len + len(c)] = torch.tensor(p + c)
            att[i, p_len - len(p):p_len + len(c)] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        ids, att, pos = ids.to(device), att.to(device), pos.to(device)
        if ids.is_cuda and bool(att.all()):   # no padding: no mask, so SDPA takes its causal flash kernel instead
            att = pos = None                  # of materialising [heads, L, L] scores (docs/gpu.md)
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=t_len + 1).logits
        lp = token_logprobs(logits[:, :-1], ids[:, p_len:], temperature)               # [b, t_len]
        for k, i in enumerate(idx):
            rows[i] = F.pad(lp[k], (0, width - t_len))
    logp = torch.stack(rows)                                                          # [B, T]
    mask = torch.zeros(n, width, device=logp.device)
    for i, c in enumerate(completion_ids):
        mask[i, :len(c)] = 1
    return logp, mask


def policy_mask(samples: list, length: int | None = None) -> torch.Tensor:
    """[B, T] 1.0 where the token was sampled by the policy (the loss's tokens), 0.0 on padding and on
    inserted tool output (Sample.mask)."""
    t = length or max(max(len(s.completion_ids) for s in samples), 1)
    out = torch.zeros(len(samples), t)
    for i, s in enumerate(samples):
        m = s.mask if s.mask is not None else [1] * len(s.completion_ids)
        out[i, :min(len(m), t)] = torch.tensor(m[:t], dtype=torch.float32)
    return out



def pad_logprobs(samples: list, length: int | None = None) -> torch.Tensor:
    """The engine's sampling log-probs as a right-padded [B, T] tensor."""
    t = length or max(max(len(s.logprobs) for s in samples), 1)
    out = torch.zeros(len(samples), t)
    for i, s in enumerate(samples):
        out[i, :len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    return out


class SyncError(RuntimeError):
    pass


# Mean |delta log p| above which engine and trainer are taken to hold different adapters: in sync the two
# agree to ~1e-5 in fp32, one optimizer step apart they differ by ~0.1 (docs/results.md, "Engine sync").
SYNC_TOLERANCE = 0.02


def check_sync(model, samples: list, pad_id: int, temperature: float, tolerance: float = SYNC_TOLERANCE) -> dict:
    """Score sampled responses with the trainer's policy and compare with the engine's log-probs.

    Returns {"mean": mean |delta log p| over tokens, "max": the largest}; raises SyncError when the
    mean exceeds `tolerance`: the engine is not sampling from the policy being trained (an adapter
    that did not arrive, or arrived garbled: TRL #2698, unsloth-zoo #941).
    """
    samples = [s for s in samples if s.completion_ids]
    if not samples:
        return {"mean": 0.0, "max": 0.0}
    with torch.no_grad():
        logp, mask = sequence_logprobs(model, [s.prompt_ids for s in samples],
                                       [s.completion_ids for s in samples], pad_id, temperature)
    return compare_logprobs(logp, pad_logprobs(samples, logp.shape[1]), mask * policy_mask(samples, logp.shape[1]),
                            tolerance)


def compare_logprobs(trainer_logp, engine_logp, mask, tolerance: float = SYNC_TOLERANCE) -> dict:
    """check_sync's comparison on log-probs already at hand ([B, T] each, mask [B, T]): the trainer's
    score of the sampled tokens before any optimizer step vs the engine's sampling log-probs."""
    mask = mask.detach().cpu()
    diff = (trainer_logp.detach().cpu() - engine_logp.cpu()).abs() * mask
    stats = {"mean": float(diff.sum() / mask.sum().clamp(min=1)), "max": float(diff.max())}
    if stats["mean"] > tolerance:
        raise SyncError(f"engine and trainer disagree: mean |delta log p| = {stats['mean']:.4f} > {tolerance} "
                        f"(max {stats['max']:.3f}) over {int(mask.sum())} tokens. The generation engine is not "
                        "sampling from the policy being trained: the adapter did not reach it.")
    return stats
