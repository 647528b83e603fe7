"""Answers and rewards: binary correctness (paper §4, footnote 1) and the held-out metrics (App. D).

Copy this file alone into any trainer: it needs the standard library (and math-verify where installed).

- `extract_answer`  strip <think>...</think> and tool output, take the last \\boxed{} (else `####`, else the
                    last number)
- `is_correct`      math-verify equivalence (normalised exact match where it cannot parse)
- `RewardFn`        r in {0, 1}; never raises: an error scores 0 and is counted
- `evaluate`        held-out avg@k / pass@k / maj@k and greedy accuracy of an engine
"""
from __future__ import annotations

import re
import threading

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
    scores 0, as the official verifier's exact string match scores it (a policy learns to exploit it:
    docs/tools.md)."""
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

    format_gate: the official code's gate (verl recipe/spo reward): a response without exactly one </think>, or with
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
    by_level = {}                                     # level -> avg@k of each problem (the embedded tasks' levels)
    for j, t in enumerate(held):
        texts = [o.text for o in out[j * k:(j + 1) * k]]
        r = [rf(x, t.answer) for x in texts]
        avg += sum(r) / k
        by_level.setdefault(t.level, []).append(sum(r) / k)
        pas += pass_at_k(k, int(sum(r)), k)
        maj += majority_correct([extract_answer(x) for x in texts], r)
    n = len(held)
    levels = {f"eval/avg@{k}_level{lv}": sum(x) / len(x) for lv, x in sorted(by_level.items())} \
        if len(by_level) > 1 else {}
    return {f"eval/avg@{k}": avg / n, f"eval/pass@{k}": pas / n, f"eval/maj@{k}": maj / n,
            "eval/greedy": sum(rf(o.text, t.answer) for o, t in zip(greedy, held)) / n, **levels}


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
