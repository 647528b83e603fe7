"""A short supervised warm-up that teaches the tool protocol, saved as a LoRA adapter for `--init-adapter`.

    python -m extensions.sft                        # 16 demonstrations of the embedded tool task -> runs/tools-sft/adapter
    python train.py --dataset embedded-tools --tools python --init-adapter runs/tools-sft/adapter ...

SmolLM2-135M never writes a <code> block from the instruction alone (docs/tools.md), so
RL has nothing to reinforce. This is the smallest honest bootstrap: demonstrations on problems of the task
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

from data import EMBEDDED_SYSTEM_PROMPT, chat_prompt, embedded_tool_tasks
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
    demos: int = 16
    """demonstrations: problems of the task outside train.py's training pool and held-out set"""
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


def demo_tasks(n: int, n_train: int, seed: int) -> list:
    """n problems of the tool task that are in neither the RL training pool nor the held-out set of train.py's
    `--dataset embedded-tools --n-train n_train --seed seed` (up to 512 held-out problems): the warm-up teaches
    the protocol, RL then meets problems the warm-up never showed."""
    train, held = embedded_tool_tasks(n_train, 512, seed=seed)
    taken = {t.prompt for t in train + held}
    fresh = [t for t in embedded_tool_tasks(4 * n, 0, seed=seed + 1_000_003)[0] if t.prompt not in taken]
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


def fit(model, tok, prompts: list, demos: list, steps: int, batch_size: int, lr: float, rng: random.Random) -> float:
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
            print(f"sft step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    return loss.item()


def main(a: Args) -> str:
    if a.dataset != "embedded-tools":
        raise SystemExit("error: --dataset: the warm-up builds demonstrations for embedded-tools only")
    torch.manual_seed(a.seed)
    model, tok, _ = load_policy(a.model, LoraArgs(a.lora_r, a.lora_alpha))
    tasks = demo_tasks(a.demos, a.n_train, a.seed)
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
