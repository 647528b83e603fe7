"""Tool-integrated rollouts: responses that call a Python interpreter mid-generation (the paper's setting).

`ToolEngine(engine, tokenizer)` wraps an engine (HF or vLLM) and keeps its interface, so training,
offline init and evaluation all roll out with the tool. One response, as the official SPO/ReTool agent
loop (verl recipe/spo `agent_loop/spo_tool_agent_loop.py`):

    generate until `</code>` (kept), EOS, or the response's token budget
    -> the turn's first <code>```python ...```</code> block, last line wrapped in print(...), runs in the sandbox
    -> its output comes back as "<interpreter>\\n...\\n</interpreter>\\n\\n" (middle-truncated to 256 characters)
    -> generation continues in the same response, from the token ids so far (no re-tokenisation)
It ends with no code block, at EOS, after `max_turns` generation turns, or when the budget
(max_completion_length, counting tool output) is spent; tool output that would not fit ends it unappended.

Many responses are in flight: each turn batches every unfinished response into one engine call (vLLM: one
request per response, all under the current LoRA request); finished ones drop out, tool calls of a turn run
concurrently (`workers`). Tool-output tokens were not sampled by the policy: Sample.mask is 0 there (the
loss and the engine-vs-trainer check skip them; the drift D keeps them, as the official code).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from extensions.sandbox import extract_code, interpreter_block, run_code, run_code_remote, wrap_last_line
from rollout import Engine, Sample, per_row

STOP = ["</code>"]
ERRORS = ("Traceback (most recent call last)", "TimeoutError:", "OutputError:", "Killed", "SandboxError:",
          "DiskError:")


class ToolEngine(Engine):
    """An engine whose responses may call the Python tool; `generate` (Engine's: tokenise, check prompt lengths)
    and `generate_ids` have the wrapped engine's signatures."""

    def __init__(self, engine, tokenizer, max_turns: int = 8, max_tool_response_length: int = 256,
                 timeout: float = 10.0, workers: int = 4, sandbox_url: str | None = None):
        self.engine, self.tok, self.max_prompt_length = engine, tokenizer, engine.max_prompt_length
        self.max_turns, self.max_chars = max_turns, max_tool_response_length
        self.run = partial(run_code_remote, url=sandbox_url, timeout=timeout) if sandbox_url else \
            partial(run_code, timeout=timeout)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def batch_metrics(self, samples: list) -> dict:
        return tool_metrics(samples)

    def __getattr__(self, name):                 # name, load_adapter, sleep, wake_up, close: the engine's
        return getattr(self.engine, name)

    def generate_ids(self, prompt_ids: list, max_new_tokens, temperature: float = 1.0, seed: int | None = None,
                     seeds: list | None = None, stop: list | None = None, top_p: float = 1.0) -> list:
        """One tool-integrated response per prompt (token ids); Sample.mask marks the tool output. `stop` is
        the tool protocol's own (</code>)."""
        if stop:
            raise ValueError(f"a tool rollout stops at {STOP} itself; got stop={stop}")
        rs = [ToolTrajectory(p, b) for p, b in zip(prompt_ids, per_row(max_new_tokens, len(prompt_ids)))]
        live = list(range(len(rs)))
        while live:
            turn = rs[live[0]].turns
            out = self.engine.generate_ids(
                [rs[i].prompt + rs[i].ids for i in live], [rs[i].left() for i in live], temperature,
                seed=None if seed is None else seed + 7919 * turn,
                seeds=None if seeds is None else [seeds[i] + 1_000_003 * turn for i in live], stop=STOP,
                top_p=top_p)
            calls = [(i, code) for i, o in zip(live, out)
                     if (code := rs[i].add_turn(o, self.tok, self.max_turns)) is not None]
            t0 = time.time()
            results = list(self.pool.map(self.run, [c for _, c in calls]))
            share = (time.time() - t0) / max(len(calls), 1)           # the turn's tool wall time, shared
            live = [i for (i, _), text in zip(calls, results) if rs[i].add_output(text, self.tok, self.max_chars, share)]
        return [r.sample(self.tok) for r in rs]


class ToolTrajectory:
    """One tool-integrated response being built, turn by turn: what the batch loop above and the continuous
    collector (collector.py) both do to a response between two generation turns."""

    def __init__(self, prompt: list, budget: int):
        self.prompt, self.budget = prompt, budget
        self.ids, self.mask, self.lps, self.why = [], [], [], "length"
        self.turns = self.calls = self.errors = self.timeouts = 0
        self.tool_s = 0.0

    def left(self) -> int:
        return self.budget - len(self.ids)

    def add_turn(self, o: Sample, tok, max_turns: int) -> str | None:
        """Append a generation turn; return the code to run (last line wrapped in print) if the turn ended
        in </code> with a code block and budget and turns are left, else None (the response is done)."""
        self.ids += o.completion_ids
        self.mask += [1] * len(o.completion_ids)
        self.lps += o.logprobs
        self.turns += 1
        self.why = o.finish_reason
        code = extract_code(tok.decode(o.completion_ids)) if o.finish_reason == "tool" else None
        return wrap_last_line(code) if code is not None and self.left() > 0 and self.turns < max_turns else None

    def add_output(self, text: str, tok, max_chars: int, seconds: float = 0.0) -> bool:
        """Append the tool's output as an <interpreter> block (mask 0); False if it would not fit (the
        response ends there, output not appended, as the official loop)."""
        self.calls += 1
        self.tool_s += seconds
        self.errors += any(e in text for e in ERRORS)
        self.timeouts += "TimeoutError:" in text
        obs = tok(interpreter_block(text, max_chars), add_special_tokens=False)["input_ids"]
        if len(self.ids) + len(obs) >= self.budget:
            self.why = "length"
            return False
        self.ids += obs
        self.mask += [0] * len(obs)
        self.lps += [0.0] * len(obs)
        return True

    def sample(self, tok) -> Sample:
        return Sample(self.prompt, self.ids, self.lps, self.why, tok.decode(self.ids, skip_special_tokens=True),
                      mask=self.mask, info={"turns": self.turns, "calls": self.calls, "errors": self.errors,
                                            "timeouts": self.timeouts, "tool_s": self.tool_s})


def tool_metrics(samples: list) -> dict:
    """Per-step means over a batch's responses (docs/metrics.md): tool calls, generation turns, tool errors and
    timeouts, share of response tokens that are tool output, seconds in tools."""
    n = max(len(samples), 1)
    info = [s.info or {} for s in samples]
    tokens = sum(len(s.completion_ids) for s in samples)
    tool_tokens = sum(len(s.mask) - sum(s.mask) for s in samples if s.mask is not None)
    return {"tools/calls": sum(i.get("calls", 0) for i in info) / n,
            "tools/turns": sum(i.get("turns", 1) for i in info) / n,
            "tools/errors": sum(i.get("errors", 0) for i in info) / n,
            "tools/timeouts": sum(i.get("timeouts", 0) for i in info) / n,
            "tools/output_token_share": tool_tokens / max(tokens, 1),
            "tools/seconds": sum(i.get("tool_s", 0.0) for i in info)}
