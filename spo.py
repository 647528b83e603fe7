"""SPO's advantage, loss and drift functions (paper §4.2, Eq. 8-10), pure functions of tensors.

Copy this file alone into any trainer: it needs torch and nothing else.

    A       = r - v_hat_{-1}(x)                          Eq. 8   raw advantage, pre-update baseline
    A_tilde = (A - mean_B(A)) / (std_B(A) + 1e-8)        Eq. 9   normalised over the whole batch
    L       = -E_t[min(ratio_t A, clip(ratio_t) A)]      Eq. 10  PPO-clip, Clip-Higher 0.2 / 0.28

plus the comparison estimator (GRPO's group baseline), two drop-in loss variants that the paper says
SPO composes with (GSPO's sequence ratio, SAPO's soft gate), the policy drift D that drives the
tracker's forgetting factor, and a memory-frugal log-prob gather.

Shapes: B responses, T response tokens (right-padded), V vocabulary.
"""
from __future__ import annotations

import torch

# ============================================================== advantages


def spo_advantages(rewards, baselines, eps: float = 1e-8, zero_if_rewards_agree: bool = False) -> torch.Tensor:
    """Eq. 8 then Eq. 9: A = r - v_hat_{-1}, normalised over the whole batch.

    rewards, baselines: [B] (tensors or sequences). `baselines` must be the tracker's values read
    *before* this step's rewards are added, or the baseline depends on the action and the gradient
    is biased. std is unbiased (Bessel), as in the official code. A batch of one, or one whose raw
    advantages are all equal, carries no signal and returns zeros (never NaN). Pass baselines = 0
    for the paper's "no baseline" ablation. Returns float32 [B].

    zero_if_rewards_agree (neither the paper nor the official code): a batch whose rewards are all
    equal also returns zeros, as GRPO's degenerate group. Without it Eq. 9 turns such a batch into
    (mean v_hat - v_hat) / std v_hat when every r = 1: correct answers pushed down or up by the
    tracker's differences alone. The paper's batches (256 of 17k prompts) never meet one; a small
    pool that the policy has solved does. Off by default, as in the paper.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    b = torch.as_tensor(baselines, dtype=torch.float64).flatten()
    if r.shape != b.shape:
        raise ValueError(f"rewards {tuple(r.shape)} and baselines {tuple(b.shape)} differ in shape")
    a = r - b                                                         # [B]  Eq. 8
    if a.numel() < 2 or bool((a == a[0]).all()) or (zero_if_rewards_agree and bool((r == r[0]).all())):
        return torch.zeros_like(a, dtype=torch.float32)
    return ((a - a.mean()) / (a.std() + eps)).float()                # [B]  Eq. 9


def grpo_advantages(rewards, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's baseline for comparison: (r - mean_group) / (std_group + eps), groups contiguous.

    rewards: [B] with B = prompts * group_size, the G responses of a prompt next to each other.
    `scale=False` gives Dr. GRPO's mean-only baseline. std is unbiased, eps 1e-6, as verl.
    A group whose rewards all agree gets zero advantage: the "degenerate group" of the paper.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"group_size={group_size} does not divide the batch of {r.numel()} rewards")
    g = r.view(-1, group_size)                                        # [B/G, G]
    a = g - g.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        a = a / (g.std(dim=1, keepdim=True) + eps)
    return a.flatten().float()                                        # [B]


def degenerate_share(rewards, group_size: int) -> float:
    """Share of samples in groups whose rewards all agree (zero GRPO signal; paper Fig. 3)."""
    g = torch.as_tensor(rewards, dtype=torch.float64).flatten().view(-1, group_size)
    return (g == g[:, :1]).all(dim=1).double().mean().item()


def live_group_var(rewards, group_size: int) -> float:
    """Variance of GRPO's unnormalised advantage r - mean_group over the samples of groups whose rewards disagree:
    the variance of the signal GRPO trains on, beside SPO's r - v_hat over its whole batch. 0 if every group agrees."""
    g = torch.as_tensor(rewards, dtype=torch.float64).flatten().view(-1, group_size)
    a = (g - g.mean(dim=1, keepdim=True))[~(g == g[:, :1]).all(dim=1)]            # [live groups, G]
    return a.var(unbiased=False).item() if a.numel() else 0.0


# ============================================================== policy losses


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def policy_loss(logp, old_logp, advantages, mask, epsilon: float = 0.2, epsilon_high: float = 0.28,
                dual_clip: float | None = 10.0, variant: str = "ppo", tau_pos: float = 1.0,
                tau_neg: float = 1.05, normalizer: float | None = None, weights=None):
    """Clipped policy-gradient loss (Eq. 10) and its stats. Returns (loss, stats dict of floats).

    logp, old_logp: [B, T] log-probs of the sampled tokens under the policy being trained and the
    policy that sampled (recomputed just before the update, as verl). advantages: [B] (broadcast to
    every token) or [B, T]. mask: [B, T], 1 on response tokens that are trained on (0 on padding and
    tool output). log ratios are clamped to [-20, 20] as verl.

    variant
      "ppo"   PPO-clip with Clip-Higher: ratio clipped to [1 - epsilon, 1 + epsilon_high] (DAPO),
              and dual-clip: for A < 0 the loss is capped at -A * dual_clip (verl clip_ratio_c).
              Token-mean over the batch (verl loss_agg_mode="token-mean").
      "gspo"  GSPO (Zheng et al. 2025): one ratio per sequence, s = exp(mean_t log ratio), clipped
              to [1 - epsilon, 1 + epsilon_high]; mean over sequences. GSPO's own ranges are tiny
              (epsilon=3e-4, epsilon_high=4e-4). For one-token responses it equals "ppo".
      "sapo"  SAPO (Gao et al. 2025): soft gate f(ratio) = (4 / tau) * sigmoid(tau * (ratio - 1)),
              tau = tau_pos for A > 0 else tau_neg; loss -f * A, token-mean. df/dratio = 1 at
              ratio 1, so at ratio 1 the gradient is exactly the unclipped policy gradient; it
              then fades smoothly instead of stopping at a clip edge. (The seed text's "4 tau"
              would give tau^2 at ratio 1; the paper's constant is 4 / tau.)

    normalizer: when this call sees one micro-batch of a larger mini-batch, pass the mini-batch's
    token count ("ppo", "sapo") or sequence count ("gspo") so that accumulated gradients equal one
    big batch's; default: this call's own count.
    weights: [B, T] per-token importance weights on the loss, no gradient (`tis_weights`: off-policy
    samples); the normaliser still counts tokens, not weights.
    """
    mask = mask.to(logp.dtype)
    wmask = mask if weights is None else mask * weights.detach().to(logp.dtype)   # [B, T] loss weight per token
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)                                       # [B, 1] -> broadcasts over T
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)                  # [B, T]
    ratio = log_ratio.exp()
    n_tok = mask.sum() if normalizer is None else normalizer
    stats = {}

    if variant == "ppo":
        low, high = 1.0 - epsilon, 1.0 + epsilon_high
        surr1 = -adv * ratio                                          # [B, T]
        surr2 = -adv * ratio.clamp(low, high)
        loss_tok = torch.maximum(surr1, surr2)                        # pessimistic bound (Eq. 10)
        if dual_clip is not None:
            loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, -adv * dual_clip), loss_tok)
            stats["clip_frac_dual"] = masked_mean(((adv < 0) & (ratio > dual_clip)).to(mask), mask)
        stats["clip_frac_low"] = masked_mean(((adv < 0) & (ratio < low)).to(mask), mask)
        stats["clip_frac_high"] = masked_mean(((adv > 0) & (ratio > high)).to(mask), mask)
        loss = (loss_tok * wmask).sum() / n_tok
    elif variant == "gspo":
        seq_log_ratio = masked_mean(log_ratio, mask, dim=-1)          # [B]
        # token-level form with sg[s_i] * pi / sg[pi]: same value and gradient as the sequence ratio
        s = (seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()).exp()  # [B, T]
        adv_seq = adv[:, 0]                                           # [B]
        low, high = 1.0 - epsilon, 1.0 + epsilon_high
        loss_tok = torch.maximum(-adv * s, -adv * s.clamp(low, high))
        loss_seq = (loss_tok * wmask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B] (masked mean)
        has_tok = (mask.sum(-1) > 0).to(logp.dtype)
        loss = (loss_seq * has_tok).sum() / (has_tok.sum().clamp(min=1) if normalizer is None else normalizer)
        s_seq = seq_log_ratio.exp()
        stats["clip_frac_low"] = (((adv_seq < 0) & (s_seq < low)).to(logp.dtype) * has_tok).sum() / has_tok.sum().clamp(min=1)
        stats["clip_frac_high"] = (((adv_seq > 0) & (s_seq > high)).to(logp.dtype) * has_tok).sum() / has_tok.sum().clamp(min=1)
    elif variant == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
        gate = (4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0))       # [B, T]
        loss = (-gate * adv * wmask).sum() / n_tok
    else:
        raise ValueError(f"variant must be 'ppo', 'gspo' or 'sapo', got {variant!r}")

    with torch.no_grad():
        lr = log_ratio.detach()
        stats["approx_kl"] = masked_mean(lr.exp() - 1.0 - lr, mask)   # k3 estimator of KL(old||new)
        stats["ratio_mean"] = masked_mean(lr.exp(), mask)
        stats["ratio_max"] = (lr.exp() * mask).max() if mask.any() else torch.zeros(())
    return loss, {k: float(v) for k, v in stats.items()}


def tis_weights(old_logp, behaviour_logp, mask, cap: float = 2.0):
    """Truncated importance sampling for off-policy samples (Yao et al. 2025, "TIS"; verl rollout_is=token):

        w_t = min( pi_old(y_t) / pi_behaviour(y_t), C )                    per token, no gradient

    pi_behaviour sampled the tokens (the engine's log-probs, possibly an older adapter: continuous
    collection, extensions/collector.py); pi_old is the trainer's recomputed policy before this update, the
    centre of the PPO trust region (Eq. 10's ratio pi_theta / pi_old). The loss of token t is then
    w_t * PPO-clip_t: an unbiased correction where w_t <= C, truncated above C to bound the variance.
    old_logp, behaviour_logp, mask: [B, T]. Returns (w [B, T], stats: mean and max of the raw ratio,
    share of tokens truncated), 0 on padding.
    """
    raw = (old_logp.detach() - behaviour_logp).clamp(-20.0, 20.0).exp() * mask       # [B, T]
    w = raw.clamp(max=cap) * mask
    return w, {"tis/ratio_mean": float(masked_mean(raw, mask)), "tis/ratio_max": float(raw.max()) if mask.any() else 0.0,
               "tis/truncated_share": float(masked_mean((raw > cap).to(mask.dtype), mask))}


# ============================================================== drift and log-probs


def policy_drift(logp_prev, logp_now, mask) -> torch.Tensor:
    """The official code's D for the tracker (Sec. 4.1; verl recipe/spo spo_ray_trainer.py): per sequence, the masked mean of
    |log pi_prev(y_t) - log pi_now(y_t)| over the tokens of the response y stored at the prompt's
    last visit, scored then (logp_prev) and now (logp_now). Returns [B]; 0 for an empty mask.
    Which policies "then" and "now" are is the caller's choice: the code scores after each update,
    the paper's words name the policies that sampled (train.py --drift-at).
    """
    return masked_mean((logp_prev - logp_now).abs(), mask, dim=-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int = 1024) -> torch.Tensor:
    """log softmax(logits / T)[token] for each position, without a full [B, T, V] log-softmax.

    logits: [B, T, V] (any float dtype), tokens: [B, T] -> float32 [B, T], differentiable.
    Works on chunk_size positions at a time, so the float32 temporaries of logsumexp cost
    chunk_size * V floats instead of several copies of the whole batch's logits (at V = 152k and
    T = 8k, one fp32 copy of a single sequence's logits is 5 GB; a 1024-position chunk is 0.6 GB).
    """
    b, t, v = logits.shape
    flat, tok = logits.reshape(b * t, v), tokens.reshape(b * t)
    out = []
    for lg, tk in zip(flat.split(chunk_size), tok.split(chunk_size)):
        lg = lg.float()
        if temperature != 1.0:
            lg = lg / temperature
        picked = lg.gather(-1, tk.unsqueeze(-1)).squeeze(-1)         # [n]
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out).view(b, t)
