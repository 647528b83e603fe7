"""What the policy is asked: the embedded task families, generated with exact answers, and the chat prompt.

- `embedded_tasks`       the default family: arithmetic and short word problems in graded levels,
                         deterministic by seed, split into a training pool and a disjoint held-out set.
- `embedded_tool_tasks`  `--dataset embedded-tools`: numbers too large to multiply or add in the head,
                         one line of Python away (`--tools python`).
- `chat_prompt`          the chat template applied to a task (system prompt, Qwen3 `enable_thinking`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    prompt: str   # the user message; also the value tracker's key, so it must be unique
    answer: str   # the gold final answer
    level: int = 0



# ============================================================== the embedded task family

# The embedded task's system message: shorter than SmolLM2's default ("You are a helpful AI assistant named
# SmolLM, trained by Hugging Face"), so every forward pass sees fewer prompt tokens.
EMBEDDED_SYSTEM_PROMPT = "You are a calculator."

_NAMES = ["Tom", "Ana", "Sam", "Mia", "Leo", "Zoe", "Ben", "Ivy"]
_THINGS = ["apples", "pens", "books", "coins", "cards", "shells", "stamps", "marbles"]


def _make(level: int, rng: random.Random) -> Task:
    """One problem of a difficulty level: 1 one-digit sums, 2 one-digit differences, 3 sums of a
    two-digit and a one-digit number, 4 one-step word problems, 5 three one-digit addends."""
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    if level == 1:
        q, x = f"What is {a} + {b}?", a + b
    elif level == 2:
        a, b = max(a, b), min(a, b)
        q, x = f"What is {a} - {b}?", a - b
    elif level == 3:
        a = rng.randint(10, 49)
        q, x = f"What is {a} + {b}?", a + b
    elif level == 4:
        who, what = rng.choice(_NAMES), rng.choice(_THINGS)
        q, x = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?", a + b
    elif level == 5:
        q, x = f"What is {a} + {b} + {c}?", a + b + c
    else:
        raise ValueError(f"level must be 1..5, got {level}")
    return Task(q + " Answer with just the number.", str(x), level)


def embedded_tasks(n_train: int = 96, n_eval: int = 64, seed: int = 0,
                   levels: tuple = (1, 1, 1, 2, 4), make=None) -> tuple[list[Task], list[Task]]:
    """(train pool, held-out set) of distinct problems, levels drawn uniformly from `levels`.

    The default mix is weighted to what SmolLM2-135M can learn in minutes on a CPU; pass e.g.
    levels=(3, 5) for a harder pool. The two sets never
    share a prompt, and the same seed gives the same sets. `make(level, rng)` builds one problem
    (default: this family's `_make`; `embedded_tool_tasks` passes its own).
    """
    rng, seen, tasks = random.Random(seed), set(), []
    need, tries = n_train + n_eval, 0
    while len(tasks) < need:
        t = (make or _make)(rng.choice(levels), rng)
        tries += 1
        if tries > 100 * need:
            raise ValueError(f"levels {levels} have fewer than {need} distinct problems; lower n_train/n_eval")
        if t.prompt not in seen:
            seen.add(t.prompt)
            tasks.append(t)
    return tasks[:n_train], tasks[n_train:]


# The embedded tool task (--dataset embedded-tools): numbers SmolLM2-135M cannot multiply or add in its head,
# one line of Python away. The instruction says how to call the tool (the official protocol).
TOOL_INSTRUCTION = ("\nUse Python: write <code>\n```python\nprint(...)\n```\n</code> and its output comes back "
                    "in <interpreter>. Then give the answer as \\boxed{N}.")

# The official ReTool instruction (verl recipe/spo agent_loop/spo_tool_agent_loop.py), put before every problem
# when --tools python is on for any dataset but embedded-tools (the paper profile).
RETOOL_INSTRUCTION = (
    "Solve the following problem step by step. You now have the ability to selectively write executable Python "
    "code to enhance your reasoning process. The Python code will be executed by an external sandbox, and the "
    "output (wrapped in `<interpreter>output_str</interpreter>`) can be returned to aid your reasoning and help "
    "you arrive at the final answer. The Python code should be complete scripts, including necessary imports. "
    "Important: The sandbox is stateless and non-interactive; thus, prior imports, definitions, and state do not "
    "persist between executions and cannot be referenced.\nEach code snippet is wrapped with "
    "`<code>\n```python\ncode snippet\n```\n</code>`.\n*user question:*\n")


def _make_tool(level: int, rng: random.Random) -> Task:
    """1 a three-digit times a three-digit number, 2 a four-digit times a two-digit number, 3 the sum of four
    three- and four-digit numbers."""
    if level == 1:
        a, b = rng.randint(101, 999), rng.randint(101, 999)
        q, x = f"What is {a} * {b}?", a * b
    elif level == 2:
        a, b = rng.randint(1001, 9999), rng.randint(11, 99)
        q, x = f"What is {a} * {b}?", a * b
    elif level == 3:
        xs = [rng.randint(100, 9999) for _ in range(4)]
        q, x = f"What is {' + '.join(map(str, xs))}?", sum(xs)
    else:
        raise ValueError(f"level must be 1..3, got {level}")
    return Task(q + TOOL_INSTRUCTION, str(x), level)


def embedded_tool_tasks(n_train: int = 32, n_eval: int = 32, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(train pool, held-out set) of the tool task: disjoint, exact answers, the same for the same seed."""
    return embedded_tasks(n_train, n_eval, seed, levels=(1, 2, 3), make=_make_tool)



def system_message(cfg) -> str | None:
    """The chat system message --system-prompt asks for ('auto': the embedded task's instruction)."""
    if cfg.system_prompt != "auto":
        return cfg.system_prompt
    return EMBEDDED_SYSTEM_PROMPT if cfg.dataset in ("embedded", "embedded-tools") else None



def chat_prompt(tokenizer, prompt: str, system_prompt: str | None = None,
                enable_thinking: bool | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt appended.
    `enable_thinking` is passed to templates that know it (Qwen3); None leaves the template default."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
