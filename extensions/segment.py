"""Segment Policy Optimization (Guo et al., arXiv 2505.23564) -- the *other* "SPO".

Not the method this project is named for. Single-stream Policy Optimization (spo.py, tracker.py) keeps
GRPO's one-advantage-per-response and replaces the group baseline with a per-prompt value tracker.
Segment Policy Optimization keeps a group-free Monte Carlo estimate but changes the *granularity*: it
cuts each response into segments and gives every segment its own advantage, estimated from the policy
itself, between the trajectory level (GRPO) and the token level (PPO with a critic). Torch only; pure
functions, copyable alone. Per response of n tokens with sampling probabilities p_t:

  1. partition (paper §3.1)   cutpoints: tokens with p_t < threshold (where the policy "hesitates" and
                              the path can branch); a boundary at every `interval`-th cutpoint (the paper's
                              "int5" = 5), so each segment holds `interval` cutpoints and every segment
                              after the first starts at a cutpoint. Or fixed token counts (`fixed_bounds`).
  2. values (§3.2, chain)     V(s_b) at each boundary b = the mean reward of N continuations sampled by the
                              current policy from prompt + response[:b]; V at the start = the prompt's
                              MC estimate; V at the end = the response's own reward r.
  3. advantages (Eq. 4)       A_k = V(end of segment k) - V(start of segment k): the chain telescopes to
                              r - V(prompt), the trajectory-level advantage, split where value changed.
  4. token mask (§3.3)        A_k goes on the segment's low-probability tokens (the cutpoints) only -- the
                              paper's recommended "probability mask" -- or on every token of the segment.
The [B, T] advantages and their mask feed spo.policy_loss unchanged (token-mean over the masked tokens).

SPO-tree, the long-CoT instance (official code: tree_episode_generator.py, hybrid_inference_strategy.py,
configs/episode_generators/branch_factor_666.jsonnet). The responses of a prompt are sampled as a tree: each
node is a segment of a fixed token budget M, generated from prompt + its ancestors' tokens; a node that ends
(end of sequence) before its budget is a leaf, a truncated one gets the next level's children, and the last
level runs to the end of the response. Nodes are listed parents first (node 0 is the prompt, parent -1):
  5. tree values              V(leaf) = its reward; V(node) = the mean of its children's V, bottom-up
  6. tree advantages          A(node) = V(node) - V(parent): its siblings' mean is the baseline (optionally
                              divided by the siblings' std); a segment with A = 0 is not trained
  7. trained segments         each kept node trains as (prompt + its ancestors' tokens -> its own tokens)
                              with one constant advantage, on all its tokens. The Monte Carlo samples that
                              estimate the values are the responses trained on.
"""
from __future__ import annotations

import torch


def cutpoints(logp: torch.Tensor, threshold: float) -> list:
    """Indices t of the response's tokens whose sampling probability exp(logp[t]) is below `threshold`."""
    return torch.nonzero(logp.exp() < threshold).flatten().tolist()


def cutpoint_bounds(logp: torch.Tensor, threshold: float, interval: int) -> list:
    """Segment boundaries of one response (logp: [n], its tokens' sampling log-probs): [0, b_1, ..., n] with
    b_k = the (k * interval)-th cutpoint (0-based index k * interval), so every segment holds `interval`
    cutpoints (the last one at most). No cutpoint, or fewer than interval + 1: one segment [0, n]."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    cuts = cutpoints(logp, threshold)
    return [0] + cuts[interval::interval] + [len(logp)]


def fixed_bounds(n: int, size: int) -> list:
    """Boundaries [0, size, 2 size, ..., n] of fixed-token-count segments (a chain cut as SPO-tree's levels)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return list(range(0, n, size)) + [n] if n else [0, 0]


def chain_advantages(values: list) -> list:
    """Eq. 4 (SPO-chain): A_k = V_{k+1} - V_k for values V_0 (prompt), V_1..V_{K-1} (boundaries), V_K = r."""
    return [b - a for a, b in zip(values[:-1], values[1:])]


def token_advantages(bounds: list, seg_adv: list, logp: torch.Tensor | None, threshold: float | None,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One response's ([width] advantages, [width] mask of the tokens that carry them).

    Segment k's advantage goes on tokens bounds[k] .. bounds[k+1] - 1: all of them when `threshold` is None,
    else only those with exp(logp) < threshold (the probability mask). Padding beyond bounds[-1] is 0."""
    adv, carry = torch.zeros(width), torch.zeros(width)
    low = torch.ones(width, dtype=torch.bool) if threshold is None else \
        torch.nn.functional.pad(logp.exp() < threshold, (0, width - len(logp)))
    for (s, e), a in zip(zip(bounds[:-1], bounds[1:]), seg_adv):
        adv[s:e] = a
        carry[s:e] = low[s:e].float()
    return adv * carry, carry


def segment_batch(bounds: list, values: list, logps: list, threshold: float | None, width: int):
    """[B, T] advantages and carry mask of a batch, from each response's bounds and value chain."""
    rows = [token_advantages(b, chain_advantages(v), lp, threshold, width) for b, v, lp in zip(bounds, values, logps)]
    return torch.stack([a for a, _ in rows]), torch.stack([c for _, c in rows])


def tree_values(parent: list, leaf_reward: list) -> list:
    """5. V of every node, bottom-up: a leaf's (a node without children) is leaf_reward[node], an inner node's
    the mean of its children's V. `parent[i]` < i (parents first; parent[0] = -1, the prompt)."""
    kids = [[] for _ in parent]
    for i, p in enumerate(parent[1:], 1):
        kids[p].append(i)
    v = [0.0] * len(parent)
    for i in reversed(range(len(parent))):
        v[i] = sum(v[k] for k in kids[i]) / len(kids[i]) if kids[i] else float(leaf_reward[i])
    return v


def tree_advantages(parent: list, values: list, std: bool = False) -> list:
    """6. A(node) = V(node) - V(parent) for every node (the prompt, node 0: 0). V(parent) is the mean of the
    siblings' V, so this is a group baseline over the siblings; `std`: divided by the siblings' standard
    deviation (population), which is > 0 wherever A != 0. |A| < 1e-9 (the rounding of a mean of equal values)
    is 0."""
    adv = [0.0] + [values[i] - values[p] for i, p in enumerate(parent[1:], 1)]
    adv = [a if abs(a) >= 1e-9 else 0.0 for a in adv]
    if std:
        for i, p in enumerate(parent[1:], 1):
            sib = torch.tensor([values[k] for k, q in enumerate(parent) if q == p], dtype=torch.float64)
            adv[i] = adv[i] / float(sib.std(correction=0)) if adv[i] else 0.0
    return adv


def tree_segments(parent: list, tokens: list, adv: list) -> list:
    """7. The trained segments: (node, ancestors' tokens in order, its tokens, A) for every node but the
    prompt with A != 0. tokens[i] is node i's own segment (tokens[0], the prompt's, is not used)."""
    prefix = [[] for _ in parent]
    for i, p in enumerate(parent[1:], 1):
        prefix[i] = prefix[p] + (tokens[p] if p > 0 else [])
    return [(i, prefix[i], tokens[i], adv[i]) for i in range(1, len(parent)) if adv[i] != 0]
