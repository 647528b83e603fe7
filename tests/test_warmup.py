"""The format warm-up (--sft-steps, extensions/sft.py): what it shows the policy, what it teaches, and where
train.py runs it."""
import re

import pytest
import torch

import train as T
from data import chat_prompt, read_tasks, system_message
from extensions.sft import format_demos, warm_up_format
from models import load_policy
from rollout import HFEngine


def expression(task) -> str:
    return task.prompt.split("What is ", 1)[1].split("?", 1)[0]           # "38 + 43"


def test_demonstrations_are_one_digit_sums_outside_the_pool_and_the_held_out_set(policy):
    _, tok, _ = policy
    cfg = T.Config(embedded_levels="1", n_train=24, n_eval=16)              # a pool of one-digit sums itself
    train, held = read_tasks(cfg)
    tasks, prompts, demos = format_demos(cfg, tok, {t.prompt for t in train + held})
    assert len(tasks) == 32 and all(t.level == 1 for t in tasks)
    assert not {t.prompt for t in tasks} & {t.prompt for t in train + held}
    for t, p, (ids, mask) in zip(tasks, prompts, demos):
        a, b = map(int, re.findall(r"\d+", t.prompt)[:2])
        assert tok.decode(ids) == f"{a} + {b} = {a + b}{tok.eos_token}" and mask == [1] * len(ids)
        assert tok.decode(p) == chat_prompt(tok, t.prompt, system_message(cfg))   # as the run formats its prompts


def test_the_warmup_teaches_the_answer_format_on_levels_it_never_shows():
    torch.manual_seed(0)
    model, tok, _ = load_policy()
    cfg = T.Config(sft_steps=20, embedded_levels="6,8,9", n_train=8, n_eval=8)
    train, held = read_tasks(cfg)
    engine = HFEngine(model, tok)

    def in_format() -> int:                # greedy answers written "expression = number"
        out = engine.generate([chat_prompt(tok, t.prompt, system_message(cfg)) for t in train], 16, 0.0)
        return sum(bool(re.fullmatch(re.escape(expression(t)) + r" = -?\d+", o.text.strip())) for t, o in
                   zip(train, out))
    assert in_format() == 0
    assert warm_up_format(cfg, model, tok, {t.prompt for t in train + held}) < 0.01
    assert in_format() >= 7


def test_train_runs_the_warmup_before_the_offline_init(tmp_path, capsys):
    cfg = dict(sft_steps=2, steps=1, batch_size=4, n_train=8, n_eval=2, offline_samples=1, max_completion_length=8,
               eval_k=1, eval_every=0, engine="hf")
    T.train(T.Config(output_dir=str(tmp_path / "a"), **cfg))
    out = capsys.readouterr().out
    assert "sft step 2/2" in out and out.index("sft step 2/2") < out.index("offline init")
    T.train(T.Config(output_dir=str(tmp_path / "a"), resume=str(tmp_path / "a"), **{**cfg, "steps": 2}))
    assert "sft step" not in capsys.readouterr().out                   # a resumed run keeps its warmed-up adapter


def test_the_warmup_is_on_by_default_for_the_embedded_task_only():
    assert T.warmup_steps(T.Config()) == 20                                   # python train.py
    assert T.warmup_steps(T.Config(sft_steps=0)) == 0 and T.warmup_steps(T.Config(sft_steps=5)) == 5
    assert T.warmup_steps(T.Config(init_adapter="runs/x/adapter")) == 0      # a trained adapter: none
    for other in (dict(dataset="embedded-tools", tools="python"), dict(dataset="gsm8k")):
        T.validate(T.Config(**other))                                         # the default is not refused there
        assert T.warmup_steps(T.Config(**other)) == 0
        with pytest.raises(T.ConfigError, match="--sft-steps"):              # asked for, it is
            T.validate(T.Config(sft_steps=20, **other))
