"""Short supervised warm-ups: the answer format of the embedded task (run by train.py, `--sft-steps`), and the
tool protocol (saved as a LoRA adapter for `--init-adapter`).

    python train.py --sft-steps 20 --embedded-levels 3,5,6,8,9    # the format warm-up, then RL
    python -m extensions.sft                                       # the tool warm-up -> runs/tools-sft/adapter
    python train.py --dataset embedded-tools --tools python --init-adapter runs/tools-sft/adapter ...

The format warm-up. SmolLM2-135M sampled at T = 1 answers an arithmetic question in the format asked for a fifth
of the time, whatever the problem, so the largest gain open to RL is one global change of format that moves
every prompt at once: the opposite of the paper's regime, where the model already follows the answer format and
per-prompt success rates differ widely and move slowly. 20 steps on 32 one-digit sums (a level outside the pool
and the held-out set) answered as `a + b = c`<eos> teach the format; what the policy then gets right depends on
the problem (9 * 8 = 64, every time; 12 * 4 = 48, every time), which is what the tracker predicts and RL improves.

The tool warm-up. SmolLM2-135M never writes a <code> block from the instruction alone (docs/tools.md), so RL has
nothing to reinforce. This is the smallest honest bootstrap: demonstrations on problems of the task
that RL never trains or evaluates on, each one real tool use, in the token layout the rollout produces:

    <code>\\n```python\\nprint(a * b)\\n```\\n</code>          policy tokens    (loss)
    <interpreter>\\n{what the sandbox printed}\\n</interpreter>\\n\\n   tool output   (masked, as in RL)
    The answer is \\boxed{x}.<eos>                            policy tokens    (loss)

Its effect is reported apart from the RL gain (the RL run's step-0 evaluation is this adapter's).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from config import Config, warmup_steps
from data import EMBEDDED_SYSTEM_PROMPT, chat_prompt, embedded_tasks, embedded_tool_tasks, system_message
from extensions.sandbox import interpreter_block, run_code
from extensions.tools import STOP
from logprobs import sequence_logprobs
from models import EMBEDDED_MODEL, LoraArgs, load_policy


@dataclass
class Args:
    model: str = EMBEDDED_MODEL
    """the policy to warm up (LoRA on it, as train.py)"""
    dataset: str = "embedded-tools"
    """only the embedded tool task: demonstrations are generated from its training pool"""
    n_train: int = 32
    """training pool size, as train.py's --n-train (the same seed gives the same pool)"""
    tool_levels: str = Config.tool_levels
    """the pool's levels, as train.py's --tool-levels: the demonstrations avoid its pool and held-out set"""
    demos: int = 16
    """demonstrations: level-1 problems (an expression to copy into print) outside that pool and held-out set"""
    steps: int = 20
    """optimizer steps of batch_size demonstrations"""
    batch_size: int = 8
    """demonstrations per optimizer step"""
    learning_rate: float = 2e-4
    """AdamW learning rate"""
    lora_r: int = 16
    """LoRA rank (train.py's --lora-r must match to load it)"""
    lora_alpha: int = 32
    """LoRA alpha"""
    seed: int = 0
    """seed of the pool (as train.py's --seed) and of the demonstration order"""
    output_dir: str = "runs/tools-sft"
    """the adapter goes to OUTPUT_DIR/adapter"""


def demo_tasks(n: int, n_train: int, seed: int, levels: tuple) -> list:
    """n level-1 problems of the tool task (a product written as an expression) that are in neither the RL
    training pool nor the held-out set of train.py's `--dataset embedded-tools --n-train n_train --seed seed
    --tool-levels levels` (up to 512 held-out problems): the warm-up teaches the protocol on the simplest kind;
    the operations in words are RL's to learn."""
    train, held = embedded_tool_tasks(n_train, 512, seed, levels)
    taken = {t.prompt for t in train + held}
    fresh = [t for t in embedded_tool_tasks(4 * n, 0, seed + 1_000_003, (1,))[0] if t.prompt not in taken]
    return fresh[:n]


def demonstration(tok, task) -> tuple[list, list]:
    """(response ids, mask) of one tool-using answer to `task`: the code, the sandbox's real output, the answer."""
    expr = task.prompt.split("What is ", 1)[1].split("?", 1)[0]
    code = f"<code>\n```python\nprint({expr})\n```\n{STOP[0]}"
    out = interpreter_block(run_code(f"print({expr})"))
    end = f"The answer is \\boxed{{{task.answer}}}."
    parts = [(tok(code, add_special_tokens=False)["input_ids"], 1), (tok(out, add_special_tokens=False)["input_ids"], 0),
             (tok(end, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], 1)]
    ids = [t for p, _ in parts for t in p]
    mask = [m for p, m in parts for _ in p]
    return ids, mask


def fit(model, tok, prompts: list, demos: list, steps: int, batch_size: int, lr: float, rng: random.Random,
        say=lambda x: print(x, flush=True)) -> float:
    """Supervised steps on (prompt ids, (response ids, mask)) pairs: token-mean NLL of the masked-in tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(1, steps + 1):
        rows = rng.sample(range(len(prompts)), min(batch_size, len(prompts)))
        logp, _ = sequence_logprobs(model, [prompts[i] for i in rows], [demos[i][0] for i in rows], tok.pad_token_id)
        mask = torch.zeros_like(logp)                                          # [b, T] policy tokens only
        for k, i in enumerate(rows):
            mask[k, :len(demos[i][1])] = torch.tensor(demos[i][1], dtype=torch.float32)
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 1 or step % 10 == 0 or step == steps:
            say(f"sft step {step}/{steps}: loss {loss.item():.4f}")
    return loss.item()


def format_demos(cfg, tok, exclude: set) -> tuple[list, list, list]:
    """(tasks, prompt ids, (response ids, mask)) of 32 one-digit sums not in `exclude` (the pool and held-out set),
    each answered as 'a + b = c'<eos> (every response token trained), in the chat format of the run's prompts."""
    tasks = [t for t in embedded_tasks(81, 0, seed=cfg.seed + 1_000_003, levels=(1,))[0] if t.prompt not in exclude]
    prompts, demos = [], []
    for t in tasks[:32]:
        prompts.append(tok(chat_prompt(tok, t.prompt, system_message(cfg), cfg.enable_thinking),
                           add_special_tokens=False)["input_ids"])
        expr = t.prompt.split("What is ", 1)[1].split("?", 1)[0]                 # "3 + 4"
        ids = tok(f"{expr} = {t.answer}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        demos.append((ids, [1] * len(ids)))
    return tasks[:32], prompts, demos


def warm_up_format(cfg, model, tok, exclude: set, say=lambda x: print(x, flush=True)) -> float:
    """The format warm-up (--sft-steps) on `model`: `format_demos` in batches of 8, AdamW at 2e-4 whatever
    --learning-rate says (RL's rate is not the warm-up's). Returns the last loss."""
    _, prompts, demos = format_demos(cfg, tok, exclude)
    return fit(model, tok, prompts, demos, warmup_steps(cfg), 8, 2e-4, random.Random(cfg.seed), say=say)


def format_warmup(tr) -> float:
    """train.py's warm-up on a trainer's policy, before the offline init; the engine gets the warmed-up adapter."""
    loss = warm_up_format(tr.cfg, tr.model, tr.tok, {t.prompt for t in tr.train_tasks + tr.held}, tr.dist.say)
    tr.engine.load_adapter(tr.model)
    return loss


def main(a: Args) -> str:
    if a.dataset != "embedded-tools":
        raise SystemExit("error: --dataset: the warm-up builds demonstrations for embedded-tools only")
    torch.manual_seed(a.seed)
    model, tok, _ = load_policy(a.model, LoraArgs(a.lora_r, a.lora_alpha))
    tasks = demo_tasks(a.demos, a.n_train, a.seed, tuple(map(int, a.tool_levels.split(","))))
    rng = random.Random(a.seed)
    prompts = [tok(chat_prompt(tok, t.prompt, EMBEDDED_SYSTEM_PROMPT), add_special_tokens=False)["input_ids"]
               for t in tasks]                                 # as train.py formats them (--system-prompt auto)
    demos = [demonstration(tok, t) for t in tasks]
    fit(model, tok, prompts, demos, a.steps, a.batch_size, a.learning_rate, rng)
    path = os.path.join(a.output_dir, "adapter")
    model.save_pretrained(path)
    print(f"adapter: {path}   (python train.py --dataset embedded-tools --tools python --init-adapter {path})")
    return path


if __name__ == "__main__":
    import tyro
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
