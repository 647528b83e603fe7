"""Tasks, datasets and answer checking: what the policy is asked and how its answer is scored.

- `embedded_tasks`  the default task family, generated procedurally with exact answers: arithmetic
                    and short word problems in graded levels, deterministic by seed, split into a
                    training pool and a held-out set. `python train.py` learns this, offline.
- `load_tasks`      a local JSONL / Parquet / CSV file or a hub dataset via `datasets`, with presets
                    for DAPO-Math-17k (the paper's data), GSM8K and MATH. Every row is checked: a
                    problem in a local file is a DataError naming FILE:LINE (duplicate prompts too:
                    the value tracker keys on the prompt text); hub duplicates are dropped, warned.
- `read_tasks`, `format_tasks`  what train.py's Config asks for: the tasks, checked before anything else
                    runs (a bad file is a DataError naming FILE:LINE; so is a held-out file that shares
                    prompts with the training data), and their chat-formatted prompts.
- `chat_prompt`     the chat template applied to a task (system prompt, Qwen3 `enable_thinking`).
- `extract_answer`, `is_correct`, `RewardFn`: binary correctness (paper §4, footnote 1). Strip any
                    <think>...</think>, take the last \\boxed{} (else `####`, else the last number),
                    verify with math-verify; a reward never crashes the run: errors give 0, counted.
- `evaluate`        held-out avg@k / pass@k / maj@k and greedy accuracy of an engine (paper App. D).
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import threading
import warnings
from dataclasses import dataclass

# The paper's answer-format suffix (spec §2.3), appended to every math problem of the presets.
BOXED_SUFFIX = "\nThe answer format must be: \\boxed{'The final answer goes here.'}"


@dataclass(frozen=True)
class Task:
    prompt: str   # the user message; also the value tracker's key, so it must be unique
    answer: str   # the gold final answer
    level: int = 0


# ============================================================== the embedded task family

# The embedded task's system message: shorter than SmolLM2's default ("You are a helpful AI assistant named
# SmolLM, trained by Hugging Face"), so every forward pass sees 11 fewer prompt tokens (36 instead of 47).
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

    The default mix is weighted to what SmolLM2-135M can learn in minutes on a CPU (measured per-prompt
    success rates are in the README); pass e.g. levels=(3, 5) for a harder pool. The two sets never
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
# one line of Python away. The instruction says how to call the tool (the official protocol, spec §2.4).
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


# ============================================================== datasets


@dataclass(frozen=True)
class Preset:
    path: str
    config: str | None
    split: str
    prompt_field: str
    answer_field: str
    suffix: str = BOXED_SUFFIX


PRESETS = {
    # the paper's training data: English DAPO-Math-17k (spec §2.1)
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
    ds = hf_datasets.load_dataset(preset.path, preset.config, split=split or preset.split) if preset else \
        hf_datasets.load_dataset(source, split=split or "train")
    yield from ((f"{source}: row {i}", row) for i, row in enumerate(ds))


# ============================================================== what train.py asks for


def read_tasks(cfg):
    """(train tasks, held-out tasks) for train.Config `cfg`, read and checked before anything is loaded or
    written: a bad file stops here with a DataError naming FILE:LINE."""
    if cfg.dataset == "embedded":
        return embedded_tasks(cfg.n_train, cfg.n_eval, seed=cfg.seed)
    if cfg.dataset == "embedded-tools":
        return embedded_tool_tasks(cfg.n_train, cfg.n_eval, seed=cfg.seed)
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


def system_message(cfg) -> str | None:
    """The chat system message --system-prompt asks for ('auto': the embedded task's instruction)."""
    if cfg.system_prompt != "auto":
        return cfg.system_prompt
    return EMBEDDED_SYSTEM_PROMPT if cfg.dataset in ("embedded", "embedded-tools") else None


def format_tasks(cfg, tok, train, held):
    """(train, held, chat-formatted prompt per task), over-long prompts dropped and counted."""
    before = RETOOL_INSTRUCTION if cfg.tools == "python" and cfg.dataset != "embedded-tools" else ""
    fmt = {t.prompt: chat_prompt(tok, before + t.prompt, system_message(cfg), cfg.enable_thinking) for t in train + held}
    too_long = {p for p, s in fmt.items() if len(tok(s, add_special_tokens=False)["input_ids"]) > cfg.max_prompt_length}
    if too_long:
        print(f"dropped {len(too_long)} prompt(s) longer than --max-prompt-length {cfg.max_prompt_length} tokens")
        train = [t for t in train if t.prompt not in too_long]
        held = [t for t in held if t.prompt not in too_long]
    prompts = cfg.batch_size // (cfg.group_size if cfg.algo == "grpo" else 1)
    if len(train) < prompts:
        raise DataError(f"{len(train)} training prompts, fewer than the {prompts} a step needs (--batch-size)")
    return train, held, fmt


def chat_prompt(tokenizer, prompt: str, system_prompt: str | None = None,
                enable_thinking: bool | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt appended.
    `enable_thinking` is passed to templates that know it (Qwen3); None leaves the template default."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)


# ============================================================== answers and rewards

_THINK = re.compile(r"<think>.*?</think>", re.S)
_INTERPRETER = re.compile(r"<interpreter>.*?(</interpreter>|$)", re.S)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k].strip()
    return None  # unbalanced: the response was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The response's final answer: after stripping <think> blocks (and anything before a lone
    </think>) and tool output (<interpreter> blocks: the model must state the answer itself), the last
    \\boxed{}, else the text after the last '####', else the last number."""
    text = _INTERPRETER.sub("", _THINK.sub("", text))
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.split("\n")[0].strip() or None
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def _normalise(s: str) -> str:
    s = s.strip().strip("$").replace("\\!", "").replace(" ", "").replace(",", "").rstrip(".")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    return s.lower()


_PLAIN_NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?")
_ARITHMETIC = re.compile(r"\d\s*(\*|\+|-|×|\\times|\\cdot)\s*\(?-?\d")


def is_correct(pred: str | None, gold: str) -> bool:
    """math-verify equivalence of two final answers (fractions, LaTeX, 1,000 = 1000, units); normalised
    exact match where math-verify is not installed or cannot parse one side. A numeric gold answer needs a
    stated number: arithmetic left for the verifier to do ("7891 * 16", which math-verify would evaluate)
    scores 0 -- found as reward hacking by a run without tools (README, tools); the official verifier's
    exact string match refuses it too."""
    if pred is None:
        return False
    if _PLAIN_NUMBER.fullmatch(gold.strip()) and _ARITHMETIC.search(pred):
        return False        # "\\boxed{7891 * 16}": math-verify would compute it; a numeric answer must be stated
    try:
        from math_verify import parse, verify
    except ImportError:
        return _normalise(pred) == _normalise(gold)
    main = threading.current_thread() is threading.main_thread()  # its timeouts use signal.alarm
    kw = {} if main else {"parsing_timeout": None}
    g, p = parse("\\boxed{" + gold + "}", **kw), parse("\\boxed{" + pred + "}", **kw)
    if not g or not p:
        return _normalise(pred) == _normalise(gold)
    return bool(verify(g, p, **({} if main else {"timeout_seconds": None})))


class RewardFn:
    """Binary outcome reward r in {0, 1}. Never raises: an exception scores 0 and is counted.

    format_gate: the official code's gate (spec §2.3): a response without exactly one </think>, or with
    <code> or <interpreter> after it (tool use belongs to the thinking), scores 0 (thinking models).
    """

    def __init__(self, format_gate: bool = False):
        self.format_gate = format_gate
        self.errors = 0      # exceptions scored as 0 (math-verify's own timeouts score 0 inside it)
        self.no_answer = 0   # responses with no extractable answer

    def __call__(self, text: str, gold: str) -> float:
        try:
            if self.format_gate and (text.count("</think>") != 1 or any(
                    tag in text.split("</think>")[1] for tag in ("<code>", "<interpreter>"))):
                return 0.0
            pred = extract_answer(text)
            if pred is None:
                self.no_answer += 1
                return 0.0
            return float(is_correct(pred, gold))
        except Exception:  # noqa: BLE001 - a reward must never stop training
            self.errors += 1
            return 0.0


# ============================================================== evaluation (paper App. D)


def evaluate(cfg, engine, held: list, fmt: dict) -> dict:
    """Held-out avg@k, pass@k (unbiased) and maj@k at --eval-temperature and --eval-top-p (paper App. D: 0.6
    and 0.95), and greedy accuracy (T = 0, one response per problem): avg@k rises both when the policy knows
    more and when it merely gets sharper (less random); greedy accuracy moves only with the first.
    `engine.generate` samples, `fmt` maps a task's prompt to its chat-formatted text; cfg gives eval_k,
    eval_temperature, eval_top_p and max_completion_length (train.Config)."""
    if not held:
        return {}
    k, rf = cfg.eval_k, RewardFn()
    prompts = [fmt[t.prompt] for t in held]
    out = engine.generate([p for p in prompts for _ in range(k)], cfg.max_completion_length,
                          cfg.eval_temperature, seed=10_007, top_p=cfg.eval_top_p)
    greedy = engine.generate(prompts, cfg.max_completion_length, 0.0)
    avg = pas = maj = 0.0
    for j, t in enumerate(held):
        texts = [o.text for o in out[j * k:(j + 1) * k]]
        r = [rf(x, t.answer) for x in texts]
        avg += sum(r) / k
        pas += pass_at_k(k, int(sum(r)), k)
        maj += majority_correct([extract_answer(x) for x in texts], r)
    n = len(held)
    return {f"eval/avg@{k}": avg / n, f"eval/pass@{k}": pas / n, f"eval/maj@{k}": maj / n,
            "eval/greedy": sum(rf(o.text, t.answer) for o, t in zip(greedy, held)) / n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):   # C(n-c, k) / C(n, k) as a product, no big factorials
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(answers: list, rewards: list) -> float:
    """maj@k for one problem: the reward of the most frequent extracted answer (ties: first seen)."""
    counts = {}
    for a, r in zip(answers, rewards):
        if a is not None:
            n, _ = counts.get(a, (0, r))
            counts[a] = (n + 1, r)
    if not counts:
        return 0.0
    return max(counts.values(), key=lambda nr: nr[0])[1]
