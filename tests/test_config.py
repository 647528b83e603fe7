"""Every bad option ends as one line naming the flag and the fix, before any model loads: a table over every field
of config.Config, built from the check written beside the field (checks.py), then the settings that contradict
each other, then the command line itself (exit status 1, no traceback, an existing run folder untouched)."""
import json
import os
import subprocess
import sys
import typing

import pytest
import tyro

import config as C
from checks import Counts, Dataset, File, Folder, Model, OneOf, OutputDir, Range, Url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREE = {"prompt_field", "answer_field", "system_prompt", "enable_thinking", "format_gate", "uniform_sampling",
        "no_baseline", "zero_if_rewards_agree", "load_in_4bit", "overwrite", "segment_all_tokens",
        "deterministic_generation", "tree_std"}   # any value of their type is valid: switches and free text


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(name: str):
    t = typing.get_type_hints(C.Config)[name]
    return next((a for a in typing.get_args(t) if a is not type(None)), t)


def bad_values(name: str, check, tmp) -> list:
    """Values the check must refuse, as command-line strings."""
    if isinstance(check, Range):
        num = base_type(name)
        out = ["nan", "inf", "-inf"] if num is float else []
        if check.lo is not None:
            out.append(str(num(check.lo) if check.lo_open else num(check.lo) - (1 if num is int else 1e-3)))
        if check.hi is not None:
            out.append(str(num(check.hi) if check.hi_open else num(check.hi) + (1 if num is int else 1e-3)))
        return out
    if isinstance(check, OneOf):
        return ["bogus"]
    if isinstance(check, Counts):
        return ["0,2", "2,,2", "2.5", "-2", "two", ""] + ([f"2,{check.hi + 1}"] if check.hi else [])
    folder, text = tmp / "empty-folder", tmp / "notes.txt"
    folder.mkdir(exist_ok=True)
    text.write_text("x")
    if isinstance(check, File):
        return [str(tmp / "missing.json"), str(folder), str(text)]
    if isinstance(check, (Folder, Model)):           # Adapter and RunDir are Folders
        return [str(tmp / "missing"), str(text), str(folder)]
    if isinstance(check, OutputDir):
        return [str(text)]
    if isinstance(check, Dataset):
        return [str(folder), str(text)]
    if isinstance(check, Url):
        return ["localhost:8080/run_code"]
    raise AssertionError(f"no bad values for {type(check).__name__}: add them here")


def test_every_option_has_its_check():
    hints = typing.get_type_hints(C.Config)
    for name in hints:
        if name in FREE:
            assert not C.CHECKS[name] and base_type(name) in (bool, str), name
        else:
            assert C.CHECKS[name], f"{flag(name)} accepts anything: write its check beside the field"


@pytest.mark.parametrize("name", [n for n in typing.get_type_hints(C.Config) if n not in FREE])
def test_bad_value_of_each_option_is_refused_naming_it(name, tmp_path):
    for check in C.CHECKS[name]:
        for value in bad_values(name, check, tmp_path):
            out = [] if name == "output_dir" else ["--output-dir", str(tmp_path / "out")]
            cfg = tyro.cli(C.Config, args=[flag(name), value, *out])
            with pytest.raises(C.ConfigError) as e:
                C.validate(cfg)
            msg = str(e.value)
            assert msg.startswith(f"{flag(name)} ") and "\n" not in msg, (name, value, msg)
    C.validate(tyro.cli(C.Config, args=["--output-dir", str(tmp_path / "out")]))      # the defaults pass


def write(path, text):
    path.write_text(text)
    return str(path)


def test_inconsistent_options_and_bad_file_contents(tmp_path):
    adapter, garbled = tmp_path / "adapter", tmp_path / "garbled"
    for folder, config in ((adapter, json.dumps({"r": 8})), (garbled, "{}")):
        folder.mkdir()
        write(folder / "adapter_config.json", config)
        write(folder / "adapter_model.safetensors", "")
    cases = [
        (["--algo", "grpo", "--group-size", "3"], "--group-size 3 must be >= 2 and divide --batch-size 16"),
        (["--num-minibatches", "3"], "--num-minibatches 3 must divide --batch-size 16"),
        (["--rho-min", "0.9", "--rho-max", "0.8"], "--rho-min 0.9 must be <= --rho-max 0.8"),
        (["--sft-steps", "20", "--dataset", "my.jsonl"], "--sft-steps teaches the embedded task's answer format"),
        (["--sft-steps", "20", "--init-adapter", str(adapter), "--lora-r", "8"], "pass one of them"),
        (["--batch-size", "256"], "--batch-size 256 needs 256 distinct prompts a step but the pool has --n-train 128"),
        (["--load-in-4bit", "--old-logprobs", "engine"], "--load-in-4bit needs --old-logprobs trainer"),
        (["--collect", "continuous"], "--collect continuous needs --engine vllm"),
        (["--collect", "continuous", "--engine", "vllm", "--oversample", "8"], "keeps 128 prompts busy"),
        (["--algo", "segment", "--tools", "python"], "--algo segment continues responses from token prefixes"),
        (["--algo", "segment", "--segment-partition", "tree", "--tree-branching", "3,2"],
         "--batch-size 16 counts the tree's full-depth leaves: make it a multiple of 6"),
        (["--algo", "segment", "--segment-partition", "tree", "--tree-branching", "2,2,2", "--batch-size", "8"],
         "has 2 levels of --segment-size 8 tokens before the last: --max-completion-length 16 leaves the last none"),
        (["--algo", "segment", "--segment-partition", "tree", "--tree-branching", "1", "--batch-size", "256"],
         "--batch-size 256 needs 256 distinct prompts a step but the pool has --n-train 128"),
        (["--eval-only", str(adapter), "--lora-r", "8", "--dataset", "my.jsonl"], "--eval-only needs a held-out set"),
        (["--init-adapter", str(adapter)], f"{adapter}: adapter has LoRA rank 8, but --lora-r is 16; pass --lora-r 8"),
        (["--offline-values", write(tmp_path / "a.json", '{"What is 1 + 1?": [1, 0]')],
         r"--offline-values .*a.json:1: malformed JSON \(Expecting ',' delimiter\)"),
        (["--offline-values", write(tmp_path / "b.json", "[[1, 0]]")], r"--offline-values .*b.json: a JSON list"),
        (["--offline-values", write(tmp_path / "c.json", '{"What is 1 + 1?": [1, 2]}')],
         r"prompt 'What is 1 \+ 1\?' has \[1, 2\]; expected a JSON object \{prompt: \[rewards in \[0, 1\]\]\}"),
        (["--offline-values", write(tmp_path / "d.json", '{"What is 1 + 1?": []}')], r"has \[\]; expected"),
        (["--init-adapter", str(garbled)], r"--init-adapter .*garbled: unreadable adapter_config.json \(KeyError"),
    ]
    for args, msg in cases:
        with pytest.raises(C.ConfigError, match=msg):
            C.validate(tyro.cli(C.Config, args=args + ["--output-dir", str(tmp_path / "out")]))


@pytest.mark.parametrize("args,starts", [
    (["--dataset", "{folder}"], "error: --dataset {folder}: a folder; pass a .jsonl, .json, .csv, .parquet file"),
    (["--dataset", "{folder}/notes.txt"], "error: --dataset {folder}/notes.txt: a .txt file, which no loader reads"),
    (["--offline-values", "{folder}/bad.json"], "error: --offline-values {folder}/bad.json:1: malformed JSON"),
    (["--epsilon-high", "nan"], "error: --epsilon-high must be a finite number >= 0, got nan"),
    (["--max-completion-length", "0"], "error: --max-completion-length must be a finite number >= 1, got 0"),
    (["--embedded-levels", "8", "--n-train", "100", "--n-eval", "32"],
     "error: --embedded-levels 8: levels (8,) have fewer than 132 distinct problems; lower --n-train / --n-eval"),
])
def test_the_command_line_says_one_line_and_touches_nothing(tmp_path, args, starts):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("What is 1 + 1? 2\n")
    (folder / "bad.json").write_text("{nope}")
    run = tmp_path / "run"                                    # an existing run: --overwrite would replace it
    (run / "ckpt").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    before = sorted((p.relative_to(run), p.read_bytes() if p.is_file() else b"") for p in run.rglob("*"))
    args = [a.format(folder=folder) for a in args]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args, "--output-dir", str(run),
                        "--overwrite"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().startswith(starts.format(folder=folder)) and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr and "Loading" not in r.stdout + r.stderr
    assert sorted((p.relative_to(run), p.read_bytes() if p.is_file() else b"") for p in run.rglob("*")) == before
