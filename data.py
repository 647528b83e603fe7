"""What the policy is asked: the embedded task families, the chat prompt, and datasets read from files or the hub,
every row checked before anything else runs.

- `embedded_tasks`       the default family: arithmetic and short word problems in graded levels,
                         deterministic by seed, split into a training pool and a disjoint held-out set.
- `embedded_tool_tasks`  `--dataset embedded-tools`: numbers too large to multiply or add in the head,
                         one line of Python away (`--tools python`), as expressions or in words.
- `chat_prompt`          the chat template applied to a task (system prompt, Qwen3 `enable_thinking`).
- `load_tasks`           a local JSONL / JSON / Parquet / CSV file or a hub dataset via `datasets`, with presets
                         for DAPO-Math-17k (the paper's data), GSM8K, MATH and the AIME evaluation sets. A
                         problem in a local file is a DataError naming FILE:LINE (duplicate prompts too: the value
                         tracker keys on the prompt text); hub duplicates are dropped, warned.
- `read_tasks`           what train.py's Config asks for, embedded or loaded: (train, held-out), checked; a held-out
                         file that shares prompts with the training data is an error.
- `format_tasks`         their chat-formatted prompts, over-long ones dropped and counted.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import warnings
from dataclasses import dataclass

from config import prompts_per_step
from rewards import last_boxed


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


# levels 6-9, two operands: operator, range of the first, range of the second
_PAIRS = {6: ("+", (10, 49), (10, 49)), 7: ("-", (50, 99), (10, 49)), 8: ("*", (2, 9), (2, 9)), 9: ("*", (11, 19), (2, 9))}


def _make(level: int, rng: random.Random) -> Task:
    """One problem of a difficulty level: 1 one-digit sums, 2 one-digit differences, 3 sums of a two-digit and a
    one-digit number, 4 one-step word problems, 5 three one-digit addends, 6 sums of two two-digit numbers,
    7 differences of two two-digit numbers, 8 one-digit products, 9 products of a teen and a one-digit number."""
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
    elif level in _PAIRS:
        op, (a0, a1), (b0, b1) = _PAIRS[level]
        a, b = rng.randint(a0, a1), rng.randint(b0, b1)
        q, x = f"What is {a} {op} {b}?", {"+": a + b, "-": a - b, "*": a * b}[op]
    else:
        raise ValueError(f"level must be 1..9, got {level}")
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
            raise ValueError(f"levels {levels} have fewer than {need} distinct problems; lower --n-train / --n-eval")
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
    """One problem of the tool task. Written as the expression to print: 1 a three-digit times a three-digit
    number (the only kind the tool warm-up shows), 2 a four-digit times a two-digit number, 3 the sum of four
    three- and four-digit numbers. In words, the expression the model's to write: 4 the sum of three numbers,
    5 a square, 6 a remainder, 7 twice a number plus another, 8 a difference, 9 a product minus a number."""
    if level == 1:
        a, b = rng.randint(101, 999), rng.randint(101, 999)
        q, x = f"What is {a} * {b}?", a * b
    elif level == 2:
        a, b = rng.randint(1001, 9999), rng.randint(11, 99)
        q, x = f"What is {a} * {b}?", a * b
    elif level == 3:
        xs = [rng.randint(100, 9999) for _ in range(4)]
        q, x = f"What is {' + '.join(map(str, xs))}?", sum(xs)
    elif 4 <= level <= 9:
        a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(101, 999)
        big, small = rng.randint(5001, 9999), rng.randint(1001, 4999)
        q, x = {4: (f"What is the sum of {big}, {small} and {c}?", big + small + c),
                5: (f"What is {a} squared?", a * a),
                6: (f"What is the remainder when {big} is divided by {b}?", big % b),
                7: (f"What is twice {big} plus {c}?", 2 * big + c),
                8: (f"What is the difference between {big} and {small}?", big - small),
                9: (f"What is {a} times {b} minus {c}?", a * b - c)}[level]
    else:
        raise ValueError(f"level must be 1..9, got {level}")
    return Task(q + TOOL_INSTRUCTION, str(x), level)


def embedded_tool_tasks(n_train: int = 32, n_eval: int = 32, seed: int = 0,
                        levels: tuple = (1, 4, 5, 6, 7, 8, 9)) -> tuple[list[Task], list[Task]]:
    """(train pool, held-out set) of the tool task: disjoint, exact answers, the same for the same seed."""
    return embedded_tasks(n_train, n_eval, seed, levels=levels, make=_make_tool)



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


# ============================================================== datasets from files and the hub

# The paper's answer-format suffix (the released training script's), appended to every math problem of the presets.
BOXED_SUFFIX = "\nThe answer format must be: \\boxed{'The final answer goes here.'}"


@dataclass(frozen=True)
class Preset:
    path: str
    config: str | None
    split: str
    prompt_field: str
    answer_field: str
    suffix: str = BOXED_SUFFIX


PRESETS = {
    # the paper's training data: English DAPO-Math-17k (App. D)
    "dapo": Preset("open-r1/DAPO-Math-17k-Processed", "en", "train", "prompt", "solution"),
    "gsm8k": Preset("openai/gsm8k", "main", "train", "question", "answer"),          # "... #### 42"
    "math": Preset("hendrycks/competition_math", None, "train", "problem", "solution"),  # \boxed{} inside
    "aime24": Preset("Maxwell-Jia/AIME_2024", None, "train", "Problem", "Answer"),  # the paper's eval sets
    "aime25": Preset("yentinglin/aime_2025", None, "train", "problem", "answer"),
}


def is_local(source: str) -> bool:
    """A local file (.jsonl, .json, .csv, .parquet) rather than a preset or a hub dataset id."""
    return source not in PRESETS and os.path.splitext(source)[1].lower() in (".jsonl", ".json", ".csv", ".parquet")


def gold_answer(raw: str) -> str:
    """The final answer inside a dataset's solution field: after '####' (GSM8K), the last \\boxed{}
    (MATH), or the field itself (DAPO, plain answers)."""
    raw = str(raw).strip()
    if "####" in raw:
        return raw.split("####")[-1].strip().replace(",", "")
    boxed = last_boxed(raw)
    return boxed if boxed is not None else raw


class DataError(ValueError):
    """A problem with the data the user can fix: the message starts with FILE:LINE (or FILE: row N)."""


def load_tasks(source: str, prompt_field: str | None = None, answer_field: str | None = None,
               split: str | None = None, suffix: str | None = None, limit: int | None = None) -> list[Task]:
    """Tasks from a preset name, a local .jsonl/.json/.csv/.parquet file, or a hub dataset id.

    A preset fills the fields, split and answer-format suffix; explicit arguments override it. Every
    problem with a local file raises DataError naming the file and line (a row for Parquet): unreadable
    or empty file, malformed JSON, a missing column, an empty or non-text prompt or answer, a duplicate
    prompt (the value tracker keys on the prompt text). Duplicates in a hub dataset, which the user
    cannot edit, are dropped with a warning instead.
    """
    preset = PRESETS.get(source)
    pf = prompt_field or (preset.prompt_field if preset else "prompt")
    af = answer_field or (preset.answer_field if preset else "answer")
    sfx = suffix if suffix is not None else (preset.suffix if preset else "")
    local = is_local(source)
    tasks, first_line, dupes = [], {}, []
    for where, row in (_local_rows(source) if local else _hub_rows(source, preset, split)):
        for field, flag in ((pf, "--prompt-field"), (af, "--answer-field")):
            if field not in row:
                raise DataError(f"{where}: no column {field!r} (set {flag}); the row has {sorted(row)}")
        p, a = row[pf], row[af]
        if isinstance(p, list):  # chat-formatted prompt: take the last user message
            p = next((m.get("content") for m in reversed(p) if isinstance(m, dict) and m.get("role") == "user"), None)
        for field, v in ((pf, p), (af, a)):
            if v is None or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{where}: empty {field!r}: every row needs a non-empty prompt and answer")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise DataError(f"{where}: {field!r} is {type(v).__name__} {str(v)[:40]!r}, expected text "
                                "(or a number for the answer)")
        p = str(p).strip()
        if sfx and not p.endswith(sfx.strip()):
            p = p + sfx
        if p in first_line:
            if local:
                raise DataError(f"{where}: duplicate prompt (the same as {first_line[p]}): the value tracker keys "
                                "on the prompt text; remove or reword one of them")
            dupes.append(where)
            continue
        at = where[len(source) + 1:].strip()                        # "12" (a line), "row 3" or "item 3"
        first_line[p] = f"line {at}" if at.isdigit() else at
        tasks.append(Task(p, gold_answer(a)))
        if limit and len(tasks) >= limit:
            break
    if not tasks:
        raise DataError(f"{source}: no rows: the dataset is empty")
    if dupes:
        warnings.warn(f"{source}: dropped {len(dupes)} duplicate prompt(s) (first at {dupes[0]}); "
                      "the value tracker keys on the prompt text", stacklevel=2)
    return tasks


def _local_rows(path: str):
    """(where, row dict) for each row of a local file; where = 'FILE:LINE' ('FILE: row N' for Parquet)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if ext == ".parquet":
        import pyarrow.parquet as pq                    # what `datasets` reads Parquet with
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:120]})") from None
        yield from ((f"{path}: row {i}", row) for i, row in enumerate(rows))
        return
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8") from None
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            if None in row:          # more cells than the header has columns
                raise DataError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} cells but the header "
                                f"has {len(reader.fieldnames)} columns; quote cells that hold commas")
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if v is not None}
        return
    if ext == ".json" and text.lstrip().startswith("["):    # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        lines = [f"{path}: item {i}" for i in range(len(items))]
    else:                                                    # JSON lines: one object per line
        items, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg}, column {e.colno}); each line must be "
                                "one JSON object") from None
            lines.append(f"{path}:{n}")
    for where, item in zip(lines, items):
        if not isinstance(item, dict):
            raise DataError(f"{where}: a JSON {type(item).__name__}, expected an object with the prompt and "
                            "answer fields")
        yield where, item


def _hub_rows(source: str, preset, split):
    import datasets as hf_datasets
    try:
        ds = hf_datasets.load_dataset(preset.path, preset.config, split=split or preset.split) if preset else \
            hf_datasets.load_dataset(source, split=split or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown name, gated, ...: the user's to fix, in one line
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}" if str(e) else type(e).__name__
        raise DataError(f"{source}: cannot load it as a hub dataset ({why}); offline, pass a local .jsonl, .json, "
                        ".csv or .parquet file") from None
    yield from ((f"{source}: row {i}", row) for i, row in enumerate(ds))


# ============================================================== what train.py asks for


def read_tasks(cfg):
    """(train tasks, held-out tasks) for train.Config `cfg`, read and checked before anything is loaded or
    written: a bad file stops here with a DataError naming FILE:LINE."""
    if cfg.dataset == "embedded":
        try:
            return embedded_tasks(cfg.n_train, cfg.n_eval, cfg.seed, tuple(map(int, cfg.embedded_levels.split(","))))
        except ValueError as e:          # too few distinct problems at these levels for the pool and held-out set
            raise DataError(f"--embedded-levels {cfg.embedded_levels}: {e}") from None
    if cfg.dataset == "embedded-tools":
        return embedded_tool_tasks(cfg.n_train, cfg.n_eval, cfg.seed, tuple(map(int, cfg.tool_levels.split(","))))
    train = load_tasks(cfg.dataset, cfg.prompt_field, cfg.answer_field)
    if not cfg.eval_dataset:
        return train, []
    held = load_tasks(cfg.eval_dataset, cfg.prompt_field, cfg.answer_field, limit=cfg.n_eval)
    seen = {t.prompt for t in train}
    shared = [t for t in held if t.prompt in seen]
    if shared:               # a held-out problem that is also trained on measures memory, not held-out accuracy
        msg = (f"{cfg.eval_dataset}: {len(shared)} of its {len(held)} held-out prompts are also training prompts "
               f"of --dataset {cfg.dataset} (first: {shared[0].prompt[:60]!r})")
        if is_local(cfg.eval_dataset) or is_local(cfg.dataset):    # the user can edit a file: an error
            raise DataError(msg + "; remove them from one file, or choose another --eval-dataset")
        warnings.warn(msg + "; dropped from the held-out set", stacklevel=2)     # two hub sets: dropped, warned
        held = [t for t in held if t.prompt not in seen]
    return train, held



def format_tasks(cfg, tok, train, held):
    """(train, held, chat-formatted prompt per task), over-long prompts dropped and counted."""
    before = RETOOL_INSTRUCTION if cfg.tools == "python" and cfg.dataset != "embedded-tools" else ""
    fmt = {t.prompt: chat_prompt(tok, before + t.prompt, system_message(cfg), cfg.enable_thinking) for t in train + held}
    too_long = {p for p, s in fmt.items() if len(tok(s, add_special_tokens=False)["input_ids"]) > cfg.max_prompt_length}
    if too_long:
        print(f"dropped {len(too_long)} prompt(s) longer than --max-prompt-length {cfg.max_prompt_length} tokens")
        train = [t for t in train if t.prompt not in too_long]
        held = [t for t in held if t.prompt not in too_long]
    prompts = prompts_per_step(cfg)
    if len(train) < prompts:
        raise DataError(f"{len(train)} training prompts, fewer than the {prompts} a step needs (--batch-size)")
    return train, held, fmt
