"""Tool-integrated rollouts on the real model: the multi-turn sample, its masks token by token, the limits,
and a training step with tools (extensions/tools.py, rollout.py's engines, extensions/sandbox.py)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import train as T
from rewards import RewardFn
from data import embedded_tool_tasks
from rollout import HFEngine, PromptTooLong
from logprobs import SyncError, check_sync, compare_logprobs, pad_logprobs, policy_mask, sequence_logprobs
from extensions.sandbox import interpreter_block
from spo import policy_loss
from extensions.tools import ToolEngine, tool_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_tool_samples(samples, tok, tasks, demos):
    """Each greedy response is the taught one: code (mask 1), the sandbox's real output (mask 0), answer (mask 1)."""
    for s, t, (ids, mask) in zip(samples, tasks, demos):
        assert s.completion_ids == ids and s.mask == mask                      # token by token
        tool = [i for i, m in zip(s.completion_ids, s.mask) if m == 0]
        product = eval(t.prompt.split("What is ")[1].split("?")[0])           # noqa: S307 (our own problem)
        assert tok.decode(tool) == interpreter_block(f"{product}\n")            # exactly the tool's output
        assert [lp for lp, m in zip(s.logprobs, s.mask) if m == 0] == [0.0] * len(tool)
        assert all(lp <= 0 for lp in s.logprobs)
        assert s.finish_reason == "stop" and s.completion_ids[-1] == tok.eos_token_id
        assert s.info["turns"] == 2 and s.info["calls"] == 1 and s.info["errors"] == 0
        assert RewardFn()(s.text, t.answer) == 1.0


def test_tool_rollout_masks_token_by_token(tool_policy):
    model, tok, _, tasks, texts, demos, _ = tool_policy
    engine = ToolEngine(HFEngine(model, tok), tok)
    samples = engine.generate(texts, 96, 0.0)
    _check_tool_samples(samples, tok, tasks, demos)
    m = tool_metrics(samples)
    assert m["tools/calls"] == 1.0 and m["tools/turns"] == 2.0 and m["tools/errors"] == 0.0
    tool_tokens = sum(len(d[1]) - sum(d[1]) for d in demos)
    assert m["tools/output_token_share"] == pytest.approx(tool_tokens / sum(len(d[0]) for d in demos))
    assert policy_mask(samples).tolist() == [d[1] + [0] * (max(len(x[1]) for x in demos) - len(d[1])) for d in demos]


def test_turn_and_token_limits_end_the_response(tool_policy):
    model, tok, _, tasks, texts, demos, _ = tool_policy
    code_len = demos[0][1].index(0)                                  # tokens up to and including </code>
    one_turn = ToolEngine(HFEngine(model, tok), tok, max_turns=1).generate(texts[:1], 96, 0.0)[0]
    assert one_turn.completion_ids == demos[0][0][:code_len] and one_turn.info["calls"] == 0
    assert one_turn.finish_reason == "tool"                          # stopped at </code>, no tool turn left
    short = ToolEngine(HFEngine(model, tok), tok).generate(texts[:1], code_len + 3, 0.0)[0]
    assert short.completion_ids == demos[0][0][:code_len]            # the output would not fit: not appended
    assert short.finish_reason == "length" and short.info["calls"] == 1 and set(short.mask) == {1}
    with pytest.raises(PromptTooLong):                               # prompts are checked as by every engine
        ToolEngine(HFEngine(model, tok, max_prompt_length=8), tok).generate(texts[:1], 96, 0.0)


def test_loss_and_sync_check_skip_tool_tokens(tool_policy):
    model, tok, _, tasks, texts, demos, _ = tool_policy
    samples = ToolEngine(HFEngine(model, tok), tok).generate(texts, 96, 1.0, seed=0)
    assert any(0 in s.mask for s in samples)
    assert check_sync(model, samples, tok.pad_token_id, 1.0)["mean"] < 1e-3     # tool tokens are not compared
    with torch.no_grad():
        logp, lengths = sequence_logprobs(model, [s.prompt_ids for s in samples], [s.completion_ids for s in samples],
                                          tok.pad_token_id)
    with pytest.raises(SyncError):                                   # ... and would fail the check if they were
        compare_logprobs(logp, pad_logprobs(samples, logp.shape[1]), lengths)
    logp = logp.clone().requires_grad_(True)
    mask = policy_mask(samples, logp.shape[1])
    loss, _ = policy_loss(logp, pad_logprobs(samples, logp.shape[1]), torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    assert (logp.grad[mask == 0] == 0).all() and (logp.grad[mask == 1] != 0).all()


def test_a_training_step_with_tools(tool_policy, tmp_path):
    adapter = tool_policy[-1]
    run = str(tmp_path / "tools")
    T.train(T.Config(dataset="embedded-tools", tool_levels="1,2,3", tools="python", init_adapter=adapter, n_train=4,
                     n_eval=2, batch_size=4, steps=1, offline_samples=1, max_completion_length=96, eval_k=1, output_dir=run))
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    step = next(r for r in rows if "reward" in r)
    assert step["tools/calls"] > 0 and step["tools/output_token_share"] > 0 and step["tools/errors"] == 0
    assert step["sync/mean"] < 1e-3                                  # engine == trainer on the sampled tokens
    assert step["spo/first_visit_share"] == 1.0
    assert os.path.exists(os.path.join(run, "adapter", "adapter_model.safetensors"))


def test_tool_flags_fail_before_anything_is_touched(tmp_path):
    out = str(tmp_path / "never")
    for flags, msg in ((["--tools", "bash"], "error: --tools must be none or python"),
                       (["--tools", "python", "--sandbox-url", "http://127.0.0.1:9/run_code"],
                        "error: --sandbox-url http://127.0.0.1:9/run_code: the SandboxFusion server is not usable")):
        r = subprocess.run([sys.executable, "train.py", *flags, "--output-dir", out], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(msg), r.stderr[-500:]
        assert not os.path.exists(out)


def test_embedded_tool_tasks_are_exact_and_disjoint():
    train, held = embedded_tool_tasks(64, 64, seed=3, levels=tuple(range(1, 10)))
    assert len(train) == len(held) == 64 and not {t.prompt for t in train} & {t.prompt for t in held}
    solve = {4: lambda a, b, c: a + b + c, 5: lambda a: a * a, 6: lambda a, b: a % b, 7: lambda a, b: 2 * a + b,
             8: lambda a, b: a - b, 9: lambda a, b, c: a * b - c}
    for t in train + held:
        q = t.prompt.split("\nUse Python")[0]
        if t.level <= 3:                                               # an expression: the code copies it
            assert str(eval(q.split("What is ")[1].split("?")[0])) == t.answer   # noqa: S307 (our own problem)
        else:                                                          # in words: the expression is the model's
            assert not re.search(r"[*+%-]", q) and str(solve[t.level](*map(int, re.findall(r"\d+", q)))) == t.answer
        assert "<code>" in t.prompt and "\\boxed{N}" in t.prompt
    assert {t.level for t in train + held} == set(range(1, 10))
    assert embedded_tool_tasks(64, 64, seed=3, levels=tuple(range(1, 10))) == (train, held)
    old = embedded_tool_tasks(16, 16, seed=3, levels=(1, 2, 3))                   # levels 1-3 draw as before
    assert [t.prompt.split("?")[0] for t in old[0][:3]] == ["What is 707 * 658", "What is 479 * 719",
                                                            "What is 2074 * 88"]


def test_tool_warmup_shows_only_level_1_and_no_pool_problem():
    from extensions.sft import demo_tasks
    levels = tuple(map(int, T.Config().tool_levels.split(",")))
    demos = demo_tasks(16, 128, 0, levels)
    train, held = embedded_tool_tasks(128, 64, 0, levels)
    assert len(demos) == 16 and {t.level for t in demos} == {1}
    assert not {t.prompt for t in demos} & {t.prompt for t in train + held}
