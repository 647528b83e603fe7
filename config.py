"""Every option of train.py in one documented dataclass (CleanRL's `Args`, TRL's `GRPOConfig`), the paper
profile, and the checks that fail before any model loads.

Option names follow TRL where TRL has one (`epsilon`, `epsilon_high`, `learning_rate`,
`max_completion_length`, `num_generations` -> here `group_size` for the GRPO baseline).
`python train.py --help` prints each field with its docstring.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import textwrap
from dataclasses import dataclass
from typing import Annotated, get_type_hints

from checks import (Adapter, Counts, Dataset, File, Model, OneOf, OutputDir, Range, RunDir, Url, adapter_rank,
                    offline_values_error)
from models import EMBEDDED_MODEL

# the --dataset names whose tasks are generated here (pool and held-out set from --n-train / --n-eval)
EMBEDDED_DATASETS = ("embedded", "embedded-tools")


@dataclass
class Config:
    profile: Annotated[str, OneOf("auto", "cpu", "paper")] = "auto"
    """'cpu' (the defaults below), 'paper' (PAPER_PROFILE), or 'auto': paper for any --model but the embedded one"""
    # --- model and data
    model: Annotated[str, Model(EMBEDDED_MODEL)] = EMBEDDED_MODEL
    """hub id or local folder of the policy; default: the embedded SmolLM2-135M-Instruct (offline)"""
    dataset: Annotated[str, Dataset(EMBEDDED_DATASETS)] = "embedded"
    """'embedded' (procedural arithmetic), 'embedded-tools' (large-number arithmetic for --tools python), a preset
    (dapo, gsm8k, math, aime24, aime25), a .jsonl/.json/.parquet/.csv file, or a hub id"""
    prompt_field: str | None = None
    """dataset column holding the problem (default: the preset's, else 'prompt')"""
    answer_field: str | None = None
    """dataset column holding the answer or solution (default: the preset's, else 'answer')"""
    eval_dataset: Annotated[str | None, Dataset(EMBEDDED_DATASETS)] = None
    """held-out set for other datasets (same field names; a file sharing a prompt with --dataset is an error);
    embedded: a disjoint generated set"""
    n_train: Annotated[int, Range(1)] = 128
    """embedded: training pool size (a prompt recurs a few times, as in the paper: 40 steps x 16 responses
    visit each of 128 prompts 5 times on average)"""
    n_eval: Annotated[int, Range(0)] = 64
    """embedded: held-out problems; other datasets: cap on eval problems"""
    embedded_levels: Annotated[str, Counts(hi=9)] = "3,5,6,8,9"
    """embedded: the difficulty levels (data._make: 1 one-digit sums, 2 differences, 3 a carry, 4 word problems,
    5 three addends, 6 two two-digit numbers, 7 their difference, 8 one-digit products, 9 a teen times a digit)
    the pool and the held-out set draw from, a level as often as it is listed"""
    tool_levels: Annotated[str, Counts(hi=9)] = "1,4,5,6,7,8,9"
    """embedded-tools: the levels (data._make_tool: 1-3 expressions to print, 4-9 operations in words) the pool and
    the held-out set draw from; the tool warm-up (extensions/sft.py) shows only level 1"""
    sft_steps: Annotated[int | None, Range(0)] = None
    """embedded: supervised warm-up steps before RL (extensions/sft.py): 32 one-digit sums outside the pool and the
    held-out set answered 'a + b = c'; AdamW at 2e-4. None: 20 on a fresh adapter, else 0 (config.warmup_steps)"""
    system_prompt: str | None = "auto"
    """system message for the chat template; None: the template's default; 'auto': the embedded task's
    short one (data.EMBEDDED_SYSTEM_PROMPT, fewer tokens than SmolLM2's default) for the embedded datasets,
    else the template's default"""
    enable_thinking: bool | None = None
    """Qwen3 chat templates: thinking on/off (None: template default)"""
    format_gate: bool = False
    """the official reward gate: 0 unless the response has exactly one </think> (thinking models)"""
    # --- algorithm (Eq. 8-10)
    algo: Annotated[str, OneOf("spo", "grpo", "segment")] = "spo"
    """'spo' (one response per prompt, tracker baseline), 'grpo' (group_size responses, group baseline), or
    'segment' (Segment Policy Optimization, the other "SPO": per-segment Monte Carlo advantages,
    extensions/segment.py)"""
    batch_size: Annotated[int, Range(1)] = 16
    """responses per step (SPO: prompts per step; GRPO: batch_size / group_size prompts x group_size)"""
    group_size: Annotated[int, Range(1)] = 4
    """GRPO: responses per prompt"""
    num_minibatches: Annotated[int, Range(1)] = 2
    """optimizer steps per epoch over the batch (the paper: 8 updates per rollout step)"""
    ppo_epochs: Annotated[int, Range(1)] = 1
    """passes over each batch"""
    epsilon: Annotated[float, Range(0, 1, hi_open=True)] = 0.2
    """lower clip range, ratio >= 1 - epsilon (Eq. 10)"""
    epsilon_high: Annotated[float, Range(0)] = 0.28
    """upper clip range, ratio <= 1 + epsilon_high (Clip-Higher)"""
    dual_clip: Annotated[float | None, Range(1, lo_open=True)] = 10.0
    """dual-clip constant for negative advantages (verl clip_ratio_c); None disables"""
    loss_variant: Annotated[str, OneOf("ppo", "gspo", "sapo")] = "ppo"
    """'ppo', 'gspo' or 'sapo' (spo.policy_loss)"""
    # --- tracker and sampler (Eq. 5-6, 11)
    offline_samples: Annotated[int, Range(0)] = 8
    """n0 samples per prompt with the initial policy to initialise the tracker (Eq. 6; the paper's 8); 0 = prior"""
    offline_values: Annotated[str | None, File((".json",))] = None
    """JSON {prompt: [rewards]} from an earlier --offline-samples run (official format); skips sampling"""
    rho_min: Annotated[float, Range(0, 1, True, True)] = 0.875
    """tracker forgetting factor lower bound, window 1 / (1 - rho_min) = 8 visits (the paper's, App. D; a
    shorter window: docs/results.md, "The tracker window")"""
    rho_max: Annotated[float, Range(0, 1, True, True)] = 0.96
    """tracker forgetting factor upper bound, window 1 / (1 - rho_max) = 25 visits (the paper's)"""
    d_half: Annotated[float, Range(0, lo_open=True)] = 0.06
    """drift half-life D_half of the forgetting factor (official code's constant)"""
    drift_at: Annotated[str, OneOf("sampling", "update")] = "sampling"
    """where the drift D (rho's input) is measured on a prompt's stored previous response: 'update' (the official
    code: after this step's update, against its score after the update at the last visit; two no-grad passes'
    worth of rows) or 'sampling' (the paper's words, "the last policy that acted on x": pi_old now vs pi_old
    stored; one pass over the stored responses only, none over this step's, whose pi_old is known; with
    --old-logprobs engine the stored scores are the engine's, so its gap to the trainer, sync/mean, adds to D)"""
    sampling_epsilon: Annotated[float, Range(0)] = 0.05
    """exploration floor of the prompt weights (Eq. 11)"""
    # --- ablations
    uniform_sampling: bool = False
    """ablation: draw SPO prompts as GRPO does (shuffled epochs, each prompt once per pass) instead of by Eq. 11"""
    no_baseline: bool = False
    """ablation: A = r (v_hat = 0), still batch-normalised"""
    zero_if_rewards_agree: bool = False
    """not the paper's, a diagnostic: a batch whose rewards all agree gets advantage 0 (as GRPO's degenerate
    group) instead of Eq. 9's normalised tracker differences"""
    # --- generation
    engine: Annotated[str, OneOf("auto", "hf", "vllm")] = "auto"
    """'hf', 'vllm', or 'auto' (vLLM on CUDA when installed, HF on the CPU where it is faster with LoRA)"""
    temperature: Annotated[float, Range(0, lo_open=True)] = 0.7
    """training sampling temperature (top-p 1, top-k off; the paper, and its profile: 1.0). Below 1 each prompt's
    success sits nearer 0 or 1, so the tracker explains more of the reward variance (docs/results.md)"""
    max_prompt_length: Annotated[int, Range(1)] = 256
    """longer prompts are dropped at load, counted and reported"""
    max_completion_length: Annotated[int, Range(1)] = 16
    """new tokens per response (HF generate runs every batch to its longest response)"""
    old_logprobs: Annotated[str, OneOf("engine", "trainer")] = "engine"
    """pi_old of the PPO ratio: 'engine' (the sampling log-probs the engine returned; no extra forward pass,
    and the first mini-batch then checks engine against trainer every step for free) or 'trainer'
    (recomputed by the trainer before the update, as verl; use it when the engine's numerics differ,
    e.g. bf16 vLLM on a GPU)"""
    sync_check_every: Annotated[int, Range(0)] = 10
    """compare engine and trainer log-probs every N steps (and after the first swap); 0 = never"""
    gpu_memory_utilization: Annotated[float, Range(0, 1, lo_open=True)] = 0.3
    """vLLM's share of GPU memory (CUDA)"""
    # --- optimisation
    learning_rate: Annotated[float, Range(0, lo_open=True)] = 1e-5
    """AdamW learning rate (LoRA takes ~10x the paper's full-parameter 1e-6; faster rates move every prompt at
    once and the tracker lags: docs/results.md, "Choosing the default")"""
    lr_scheduler_type: Annotated[str, OneOf("constant", "linear", "cosine")] = "constant"
    """'constant' (the paper), 'linear' or 'cosine': decay from --learning-rate towards 0 over --steps (TRL's
    names; no warmup). The rate is a function of the step, so a resumed run follows the same curve; resuming
    with a larger --steps stretches the rest of it"""
    weight_decay: Annotated[float, Range(0)] = 0.01
    """AdamW weight decay"""
    max_grad_norm: Annotated[float, Range(0, lo_open=True)] = 1.0
    """gradient clipping"""
    lora_r: Annotated[int, Range(1)] = 16
    """LoRA rank"""
    lora_alpha: Annotated[int, Range(0, lo_open=True)] = 32
    """LoRA alpha"""
    lora_dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    """LoRA dropout"""
    load_in_4bit: bool = False
    """QLoRA: NF4 4-bit base (bitsandbytes)"""
    init_adapter: Annotated[str | None, Adapter()] = None
    """start from this LoRA adapter folder (an SFT or earlier run's adapter/, same --lora-r); the optimizer,
    tracker and step count start fresh"""
    micro_batch_size: Annotated[int, Range(1)] = 8
    """sequences per forward/backward (gradient accumulation inside a mini-batch)"""
    steps: Annotated[int, Range(0)] = 40
    """training steps"""
    seed: Annotated[int, Range(0)] = 0
    """seed for data, sampler and generation"""
    # --- evaluation, logging, checkpoints
    eval_every: Annotated[int, Range(0)] = 20
    """held-out evaluation every N steps (and at start and end); 0 = only start and end"""
    eval_k: Annotated[int, Range(1)] = 4
    """samples per held-out problem (avg@k, pass@k, maj@k)"""
    eval_temperature: Annotated[float, Range(0)] = 0.6
    """sampling temperature of the held-out evaluation, the paper's (App. D: 0.6 with k = 32); 0 = greedy"""
    eval_top_p: Annotated[float, Range(0, 1, lo_open=True)] = 0.95
    """nucleus (top-p) of the held-out sampling, the paper's; training samples with top-p 1"""
    output_dir: Annotated[str, OutputDir()] = "runs/spo"
    """where metrics.jsonl, checkpoints, the adapter and the plot go"""
    report_to: Annotated[str, OneOf("none", "tensorboard", "wandb")] = "none"
    """where the metrics also go (TRL's option): 'tensorboard' (--output-dir/tensorboard) or 'wandb' (offline,
    into --output-dir/wandb, no account or network); metrics.jsonl, curves.png and the dashboard always are"""
    save_every: Annotated[int, Range(0)] = 10
    """checkpoint every N steps (and at the end and on SIGINT/SIGTERM)"""
    resume: Annotated[str | None, RunDir()] = None
    """continue the run saved in this output directory"""
    overwrite: bool = False
    """start a fresh run in an --output-dir that already holds one (its checkpoint, adapter and metrics
    are replaced); without it that is refused, so a finished run is never clobbered by accident"""
    eval_only: Annotated[str | None, Adapter()] = None
    """evaluate this adapter folder on the held-out set and exit"""
    max_bad_steps: Annotated[int, Range(1)] = 3
    """stop after this many consecutive non-finite losses"""
    token_budget: Annotated[int, Range(0)] = 0
    """stop when the run has generated this many tokens (responses, MC continuations, tree nodes; not the
    offline init or evaluations): arms compared at equal generation; 0 = off"""
    # --- extension: tools (--tools python; extensions/tools.py, sandbox.py)
    tools: Annotated[str, OneOf("none", "python")] = "none"
    """'none' (single-turn responses) or 'python': the response may write <code>```python ...```</code>; it runs
    in the sandbox and its output comes back inside the response as <interpreter>...</interpreter>"""
    max_tool_turns: Annotated[int, Range(1)] = 8
    """generation turns per response (the official max_assistant_turns)"""
    max_tool_response_length: Annotated[int, Range(1)] = 256
    """characters of tool output the model reads back (middle-truncated, as verl)"""
    tool_timeout: Annotated[float, Range(0, lo_open=True)] = 10.0
    """wall-clock seconds per tool call"""
    sandbox_workers: Annotated[int, Range(1)] = 4
    """tool calls run at once"""
    sandbox_url: Annotated[str | None, Url()] = None
    """a SandboxFusion server's /run_code URL (the official recipe's sandbox) instead of local processes"""
    # --- extension: continuous collection (--collect continuous; extensions/continuous.py, collector.py)
    collect: Annotated[str, OneOf("lockstep", "continuous")] = "lockstep"
    """'lockstep' (each step generates its batch and waits for the longest response) or 'continuous'
    (--engine vllm: trajectories stay in flight across steps; a batch is B landed ones, oldest launched first,
    GRPO: B/G complete groups; the others are carried into later batches)"""
    oversample: Annotated[float, Range(1)] = 1.5
    """continuous: trajectories kept in flight, as a multiple of the batch (at most what --max-staleness absorbs:
    B x (max_staleness // optimizer steps a batch + 1))"""
    max_staleness: Annotated[int, Range(0)] = 4
    """continuous: no trajectory is trained on an adapter more than this many optimizer steps old: a batch waits
    for one that would pass it (so slow problems are trained, not dropped); any staler still is dropped (counted)"""
    tis_cap: Annotated[float, Range(0, lo_open=True)] = 2.0
    """continuous with --old-logprobs trainer: cap C of the truncated importance weight min(pi_old / pi_behaviour, C)
    on each token's loss (spo.tis_weights); with --old-logprobs engine pi_old is pi_behaviour itself"""
    # --- extension: Segment Policy Optimization (--algo segment; extensions/segment_po.py, segment.py)
    segment_partition: Annotated[str, OneOf("cutpoint", "fixed", "tree")] = "cutpoint"
    """SPO-chain: 'cutpoint' (a boundary every --segment-interval low-probability tokens: the paper's short-CoT
    choice) or 'fixed' (every --segment-size tokens); or 'tree' (SPO-tree, the long-CoT instance: responses
    sampled as a tree of --segment-size-token segments, --tree-branching children a node)"""
    cutpoint_threshold: Annotated[float, Range(0, 1, lo_open=True)] = 0.9
    """a response token whose sampling probability is below this is a cutpoint"""
    segment_interval: Annotated[int, Range(1)] = 5
    """cutpoints per segment (the paper's int5)"""
    segment_size: Annotated[int, Range(1)] = 8
    """tokens per segment with --segment-partition fixed or tree (the tree's last level runs to the end)"""
    tree_branching: Annotated[str, Counts()] = "2,2"
    """SPO-tree: children per node at each level. --batch-size counts the full-depth leaves, so a step samples
    batch_size / their product prompts. The default is sized to the embedded task (2,2 at batch 16: 4 prompts x 4
    leaves, GRPO 4x4's shape; two 8-token levels cover its short answers); the official long-CoT shape is 6,6,6
    with --segment-size 600 and --batch-size a multiple of 216"""
    tree_std: bool = False
    """SPO-tree: divide each segment's advantage by the standard deviation of its siblings' values"""
    mc_rollouts: Annotated[int, Range(1)] = 4
    """continuations sampled from each segment boundary to estimate V there (Monte Carlo)"""
    segment_all_tokens: bool = False
    """put a segment's advantage on all its tokens instead of its cutpoints only (the probability mask)"""
    # --- many processes (torchrun --nproc_per_node N train.py ...; dist.py)
    deterministic_generation: bool = False
    """HF engine: sample each prompt alone from its own seed, so results do not depend on batching or on
    the number of ranks (slower; vLLM always seeds per request)"""
    dist_check_every: Annotated[int, Range(0)] = 10
    """compare a hash of tracker, sampler and adapter across ranks every N steps; 0 = never"""
    dist_timeout: Annotated[int, Range(1)] = 1800
    """seconds a collective waits for a missing rank before the job fails"""


# `python train.py --model Qwen/Qwen3-8B` on a GPU: the paper's run (App. D, E; the released train.sh) on one GPU
# with QLoRA: only the fields that differ from the CPU defaults above.
# Applied by the CLI to every field not given on the command line; the resolved config is printed and saved.
PAPER_PROFILE = dict(
    dataset="dapo", eval_dataset="aime24", n_eval=30, eval_k=16, eval_every=10,   # DAPO-Math-17k; AIME24 avg@16
    load_in_4bit=True, lora_r=32, lora_alpha=64,                                  # QLoRA
    engine="vllm", gpu_memory_utilization=0.35, old_logprobs="trainer",          # bf16 vLLM's log-probs are not pi_old
    enable_thinking=True, format_gate=True,                                      # Qwen3 thinking, the official gate
    batch_size=256, num_minibatches=4,          # the paper's ablation setting (App. E): 256 pairs, 4 updates
    max_prompt_length=2048, max_completion_length=8192, micro_batch_size=1,    # the released script's lengths
    steps=500, drift_at="update", temperature=1.0,                             # D as the official code; verl's T
    tools="python", tool_timeout=30.0, sandbox_workers=8,                      # ReTool, the official sandbox timeout
)


def apply_profile(cfg: Config, argv: list, say=None) -> Config:
    """Fill PAPER_PROFILE into the fields the command line did not set, when the profile says so.

    With --resume the saved run's config.json is the base instead, so `--resume DIR` alone continues
    the same run, and flags given beside it (e.g. a larger --steps) override it. The run continues in
    DIR itself, not in the output_dir DIR's config names (a moved or copied run folder must not write
    into the folder it came from); --output-dir beside --resume continues it into another folder.
    `say` (print) is told which fields the profile changed.
    """
    given = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    saved = os.path.join(cfg.resume or "", "config.json")
    if cfg.resume and os.path.exists(saved):
        with open(saved) as f:
            base = json.load(f)
        base = {k: v for k, v in base.items() if k in Config.__dataclass_fields__ and k not in given}
        if "output_dir" not in given:
            base["output_dir"] = cfg.resume
        return dataclasses.replace(cfg, **base)
    profile = cfg.profile if cfg.profile != "auto" else ("cpu" if cfg.model == EMBEDDED_MODEL else "paper")
    if profile not in ("cpu", "paper"):
        raise ConfigError(f"--profile must be auto, cpu or paper, got {cfg.profile!r}")
    changed = {k: v for k, v in PAPER_PROFILE.items() if k not in given} if profile == "paper" else {}
    if (cfg.load_in_4bit or changed.get("load_in_4bit")) and "old_logprobs" not in given:   # see validate
        changed["old_logprobs"] = "trainer"
    changed = {k: v for k, v in changed.items() if getattr(cfg, k) != v}
    if say and changed:
        say(textwrap.fill(", ".join(f"{k}={v}" for k, v in changed.items()), 110, subsequent_indent="  ",
                          initial_indent=f"profile {profile}: {len(changed)} fields set (a flag overrides one): "))
    return dataclasses.replace(cfg, profile=profile, **changed)


def warmup_steps(cfg: Config) -> int:
    """--sft-steps as run: the number given, or (None) 20 for the embedded task on a fresh adapter, else 0."""
    fresh_embedded = cfg.dataset == "embedded" and not (cfg.init_adapter or cfg.eval_only)
    return cfg.sft_steps if cfg.sft_steps is not None else (20 if fresh_embedded else 0)


def learning_rate_at(cfg: Config, step: int) -> float:
    """--lr-scheduler-type: the rate of training step `step` (1-based) of --steps. 'constant' is the paper's
    (App. D); 'linear' and 'cosine' decay towards 0 as transformers' schedulers of those names do, here per
    training step (the step's optimizer updates share its rate)."""
    frac = (step - 1) / max(cfg.steps, 1)               # 0 at the first step, 1 - 1/steps at the last
    if cfg.lr_scheduler_type == "linear":
        return cfg.learning_rate * (1 - frac)
    if cfg.lr_scheduler_type == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.learning_rate


def tree_shape(branching: str) -> list:
    """--tree-branching "6,6,6" -> [6, 6, 6]: children per node at each level of SPO-tree."""
    return [int(b) for b in branching.split(",")]


def prompts_per_step(cfg: Config) -> int:
    """Distinct prompts a step draws: --batch-size (SPO, SPO-chain), over --group-size (GRPO) or over the tree's
    full-depth leaves (SPO-tree)."""
    if cfg.algo == "grpo":
        return cfg.batch_size // cfg.group_size
    if cfg.algo == "segment" and cfg.segment_partition == "tree":
        return cfg.batch_size // math.prod(tree_shape(cfg.tree_branching))
    return cfg.batch_size


class ConfigError(ValueError):
    pass


def validate(cfg: Config) -> None:
    """Every option against what it accepts (the Range, OneOf or path beside its field), a file's contents, then
    the settings that contradict each other: all before any model loads, each naming the flag and the fix."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for name, checks in CHECKS.items():
        for check in checks:
            err = check.error(getattr(cfg, name))
            need(err is None, f"--{name.replace('_', '-')} {err}")
    err = cfg.offline_values and offline_values_error(cfg.offline_values)
    need(not err, f"--offline-values {err}")
    for flag in ("init_adapter", "eval_only"):
        if getattr(cfg, flag):
            r, err = adapter_rank(getattr(cfg, flag))
            need(err is None, f"--{flag.replace('_', '-')} {err}")
            need(r == cfg.lora_r, f"{getattr(cfg, flag)}: adapter has LoRA rank {r}, but --lora-r is {cfg.lora_r}; "
                 f"pass --lora-r {r}")
    if cfg.algo == "segment":
        need(cfg.tools == "none", "--algo segment continues responses from token prefixes: use it with --tools none")
    if cfg.algo == "segment" and cfg.segment_partition == "tree":
        shape = tree_shape(cfg.tree_branching)
        leaves = math.prod(shape)                    # --batch-size counts the full-depth leaves
        need(cfg.batch_size % leaves == 0, f"--batch-size {cfg.batch_size} counts the tree's full-depth leaves: "
             f"make it a multiple of {leaves} (the product of --tree-branching {cfg.tree_branching})")
        need((len(shape) - 1) * cfg.segment_size < cfg.max_completion_length,
             f"--tree-branching {cfg.tree_branching} has {len(shape) - 1} levels of --segment-size {cfg.segment_size} "
             f"tokens before the last: --max-completion-length {cfg.max_completion_length} leaves the last none")
    need(not (cfg.load_in_4bit and cfg.old_logprobs == "engine"),
         "--load-in-4bit needs --old-logprobs trainer: NF4 decoding and the trainer's full forward use different "
         "kernels, so the sampling log-probs are not pi_old")
    if cfg.algo == "grpo":
        need(cfg.group_size >= 2 and cfg.batch_size % cfg.group_size == 0,
             f"--group-size {cfg.group_size} must be >= 2 and divide --batch-size {cfg.batch_size}")
    need(cfg.batch_size % cfg.num_minibatches == 0,
         f"--num-minibatches {cfg.num_minibatches} must divide --batch-size {cfg.batch_size}")
    prompts = prompts_per_step(cfg)
    if cfg.collect == "continuous":
        need(cfg.algo in ("spo", "grpo"), "--collect continuous works with --algo spo or grpo")
        need(cfg.engine == "vllm", "--collect continuous needs --engine vllm (request-level add/step/abort)")
        if cfg.dataset in EMBEDDED_DATASETS:
            need(math.ceil(cfg.oversample * prompts) < cfg.n_train,
                 f"--collect continuous keeps {math.ceil(cfg.oversample * prompts)} prompts busy "
                 f"(--oversample x prompts per step); the pool (--n-train {cfg.n_train}) must hold more")
    need(cfg.rho_min <= cfg.rho_max, f"--rho-min {cfg.rho_min} must be <= --rho-max {cfg.rho_max}")
    if cfg.sft_steps and not cfg.resume:
        need(cfg.dataset == "embedded", f"--sft-steps teaches the embedded task's answer format: use it with "
             f"--dataset embedded, not {cfg.dataset}")
        need(not cfg.init_adapter, "--sft-steps warms up the fresh adapter, --init-adapter brings a trained one: "
             "pass one of them")
    if cfg.dataset in EMBEDDED_DATASETS:
        need(prompts <= cfg.n_train, f"--batch-size {cfg.batch_size} needs {prompts} distinct prompts a step "
             f"but the pool has --n-train {cfg.n_train}")
    need(cfg.report_to == "none" or importlib.util.find_spec(cfg.report_to) is not None,
         f"--report-to {cfg.report_to} needs the {cfg.report_to} package: pip install {cfg.report_to}")
    need(not cfg.eval_only or cfg.eval_dataset or cfg.dataset in EMBEDDED_DATASETS,
         f"--eval-only needs a held-out set: pass --eval-dataset (only the embedded tasks carry their own; "
         f"--dataset {cfg.dataset} is the training data)")
    continuing = cfg.resume and os.path.realpath(cfg.resume) == os.path.realpath(cfg.output_dir)
    if not (continuing or cfg.eval_only or cfg.overwrite):
        held = [n for n in ("ckpt", "ckpt.old", "adapter") if os.path.exists(os.path.join(cfg.output_dir, n))]
        need(not held, f"--output-dir {cfg.output_dir} already holds a run ({held[0] if held else ''}/): continue it "
             f"with --resume {cfg.output_dir}, or pass --overwrite to start over")


CHECKS = {name: getattr(hint, "__metadata__", ()) for name, hint in get_type_hints(Config, include_extras=True).items()}
