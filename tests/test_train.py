"""train.py end to end on the real SmolLM2-135M with tiny sizes: both algorithms, resume, signals, bad flags."""
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import tyro

import train as T
from logprobs import SYNC_TOLERANCE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(batch_size=4, n_train=8, n_eval=4, offline_samples=2, max_completion_length=8, micro_batch_size=4,
            eval_every=0, eval_k=1, engine="hf",   # the mechanics, on the easy levels, cold, at a fast rate:
            embedded_levels="1,1,1,2,4", sft_steps=0, learning_rate=2e-4, temperature=1.0)


def _metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def test_bad_flags_fail_before_any_model_loads(tmp_path):
    for name, text in (("adapter_config.json", '{"r": 16}'), ("adapter_model.safetensors", "")):
        (tmp_path / name).write_text(text)                # looks like an adapter folder, for --eval-only
    r = _cli("--no-such-flag", "1")
    assert r.returncode != 0 and "--no-such-flag" in r.stderr
    for args, msg in [(["--batch-size", "200"], "--batch-size 200 needs 200 distinct prompts.*--n-train 128"),
                      (["--algo", "grpo", "--group-size", "3"], "--group-size 3 must be >= 2 and divide --batch-size 16"),
                      (["--algo", "ppo"], "--algo must be spo, grpo or segment"),
                      (["--num-minibatches", "3"], "--num-minibatches 3 must divide"),
                      (["--lr-scheduler-type", "step"], "--lr-scheduler-type must be constant, linear or cosine"),
                      (["--eval-top-p", "0"], r"--eval-top-p must be a finite number > 0 and <= 1, got 0.0"),
                      (["--resume", str(tmp_path / "nothing")], "--resume .*nothing: no such file or folder"),
                      (["--eval-only", str(tmp_path), "--dataset", "mine.jsonl"],   # nothing to evaluate on
                       "--eval-only needs a held-out set: pass --eval-dataset")]:
        with pytest.raises(T.ConfigError, match=msg):
            T.validate(tyro.cli(T.Config, args=args))
    with pytest.raises(T.ConfigError, match="--load-in-4bit needs --old-logprobs trainer"):
        T.validate(tyro.cli(T.Config, args=["--load-in-4bit", "--old-logprobs", "engine"]))
    argv = ["--load-in-4bit"]                            # not asked for explicitly: the CLI picks the trainer's
    assert T.apply_profile(tyro.cli(T.Config, args=argv), argv).old_logprobs == "trainer"
    r = _cli("--batch-size", "200")                      # and the CLI says so in one line, exit 1
    assert r.returncode == 1 and "error: --batch-size 200" in r.stderr and "Loading" not in r.stderr


def test_spo_run_end_to_end(tmp_path):
    run = str(tmp_path / "spo")
    res = T.train(T.Config(steps=2, save_every=1, output_dir=run, **TINY))
    rows = [m for m in _metrics(run) if "reward" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for key in ("reward", "adv/raw_var", "adv/near_zero_0.02", "adv/near_zero_1e-4", "tracker/brier",
                "spo/rho_mean", "spo/drift_mean", "spo/n_eff_mean", "loss/clip_frac_high", "loss/clip_frac_dual",
                "loss/approx_kl", "response_length", "truncation_rate", "tokens_per_s", "time/generate", "time/train"):
        assert all(math.isfinite(m[key]) for m in rows), key
    assert all(0.875 <= m["spo/rho_min"] <= m["spo/rho_max"] <= 0.96 for m in rows)    # the paper's clamp
    assert all(m["sync/mean"] < SYNC_TOLERANCE / 100 for m in rows)     # engine log-probs as pi_old, checked
    assert all(0 <= m["sampler/uncertain_batch"] <= 1 and 0 <= m["sampler/uncertain_pool"] <= 1 for m in rows)
    evals = [m for m in _metrics(run) if "eval/avg@1" in m]
    assert [m["step"] for m in evals] == [0, 2] and res["final_eval"]["eval/avg@1"] == evals[-1]["eval/avg@1"]
    table = json.load(open(os.path.join(run, "offline_values.json")))
    assert len(table) == 8 and all(len(v) == 2 for v in table.values())
    assert os.path.exists(os.path.join(run, "curves.png"))
    from peft import PeftModel
    from models import load_policy
    base, _, _ = load_policy(lora=None)
    PeftModel.from_pretrained(base, os.path.join(run, "adapter"))      # a standard peft adapter folder
    # the saved offline values are reused exactly: same tracker start, no sampling
    again = str(tmp_path / "again")
    T.train(T.Config(steps=0, output_dir=again, offline_values=os.path.join(run, "offline_values.json"), **TINY))
    st = torch.load(os.path.join(again, "ckpt", "state.pt"), weights_only=False)["tracker"]
    assert st["alpha"] == pytest.approx([8 * (sum(table[k]) + 0.5) / 3 for k in st["keys"]])   # N0 = 1/(1 - 0.875)
    # the saved adapter evaluates as it did at the end of the run, alone and as the start of a new run
    adapter = os.path.join(run, "adapter")
    assert T.train(T.Config(eval_only=adapter, output_dir=str(tmp_path / "ev"), **TINY)) == res["final_eval"]
    warm = str(tmp_path / "warm")
    T.train(T.Config(steps=0, init_adapter=adapter, output_dir=warm, **{**TINY, "offline_samples": 0}))
    assert {k: v for k, v in _metrics(warm)[0].items() if k != "step"} == res["final_eval"]
    with pytest.raises(T.ConfigError, match="adapter has LoRA rank 16, but --lora-r is 8; pass --lora-r 16"):
        T.train(T.Config(init_adapter=adapter, lora_r=8, output_dir=str(tmp_path / "r8"), **TINY))
    # a finished run is not clobbered by a fresh one in the same folder; --overwrite starts over, new log
    with pytest.raises(T.ConfigError, match=f"--output-dir {warm} already holds a run .*--resume {warm}.*--overwrite"):
        T.train(T.Config(steps=0, output_dir=warm, **TINY))
    T.train(T.Config(steps=0, output_dir=warm, overwrite=True, **{**TINY, "offline_samples": 0}))
    assert [m["step"] for m in _metrics(warm)] == [0, 0]     # eval at start and at the end of 0 steps


def test_learning_rate_schedules_by_hand():
    """--lr-scheduler-type over --steps 4 from 1e-3: step k (1-based) is at fraction (k - 1) / 4 of the run."""
    def rates(kind):
        cfg = T.Config(learning_rate=1e-3, steps=4, lr_scheduler_type=kind)
        return [T.learning_rate_at(cfg, k) for k in (1, 2, 3, 4)]
    assert rates("constant") == [1e-3] * 4                                      # the paper's
    assert rates("linear") == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    c = math.sqrt(0.5) / 2                                                      # cos(pi / 4) / 2
    assert rates("cosine") == pytest.approx([1e-3, (0.5 + c) * 1e-3, 5e-4, (0.5 - c) * 1e-3])


def test_grpo_run_same_loop(tmp_path):
    run = str(tmp_path / "grpo")
    T.train(T.Config(algo="grpo", group_size=2, steps=2, lr_scheduler_type="linear", output_dir=run, **TINY))
    rows = [m for m in _metrics(run) if "reward" in m]
    assert len(rows) == 2 and all(0 <= m["grpo/degenerate_share"] <= 1 for m in rows)
    assert not any("spo/rho_mean" in m for m in rows)
    # the schedule is what the optimizer used, not only what was logged: its last rate is in the checkpoint
    assert [m["lr"] for m in rows] == pytest.approx([2e-4, 1e-4])
    opt = torch.load(os.path.join(run, "ckpt", "state.pt"), weights_only=False)["optimizer"]
    assert [g["lr"] for g in opt["param_groups"]] == pytest.approx([1e-4])


def test_resume_continues_exactly(tmp_path):
    full, part, fork = str(tmp_path / "full"), str(tmp_path / "part"), str(tmp_path / "fork")
    T.train(T.Config(steps=3, save_every=1, output_dir=full, **TINY))
    T.train(T.Config(steps=2, save_every=1, output_dir=part, **TINY))
    before = open(os.path.join(part, "metrics.jsonl")).read()
    start = _metrics(part)[0]                            # the step-0 evaluation
    res = T.train(T.Config(steps=3, save_every=1, output_dir=fork, resume=part, **TINY))   # continued elsewhere
    assert open(os.path.join(part, "metrics.jsonl")).read() == before                       # the source untouched
    T.train(T.Config(steps=3, save_every=1, output_dir=part, resume=part, **TINY))         # continued in place
    a = torch.load(os.path.join(full, "ckpt", "state.pt"), weights_only=False)
    for run in (part, fork):
        b = torch.load(os.path.join(run, "ckpt", "state.pt"), weights_only=False)
        assert a["tracker"] == b["tracker"]              # bit-identical values, keys, visits
        assert a["sampler"] == b["sampler"]              # the next batch drawn is the same
        assert [m["reward"] for m in a["history"]] == [m["reward"] for m in b["history"]]
        # the log holds the whole run: the step-0 evaluation, steps 1-3 once each, part's own final
        # evaluation at step 2 (a real measurement of that checkpoint) and the final one at step 3
        rows = _metrics(run)
        assert rows[0] == start and [m["step"] for m in rows if "reward" in m] == [1, 2, 3]
        assert [m["step"] for m in rows if "reward" not in m] == [0, 2, 3]
    assert res["first_eval"] == {k: v for k, v in start.items() if k != "step"}   # "start -> end" is the run's
    assert res["evals"] == [m for m in _metrics(fork) if "reward" not in m]


def test_sigterm_saves_and_resume_works(tmp_path):
    run = str(tmp_path / "sig")
    args = ["--steps", "50", "--save-every", "0", "--output-dir", run] + \
        [x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:                                # wait for the first training step
        if line.startswith("step"):
            break
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0 and "SIGTERM: saved a checkpoint" in out
    st = torch.load(os.path.join(run, "ckpt", "state.pt"), weights_only=False)
    assert 1 <= st["step"] < 50
    r = _cli("--resume", run, "--steps", str(st["step"] + 1))   # the saved config; only --steps changes
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"resumed from {run}/ckpt at step {st['step']}" in r.stdout
    steps = [m["step"] for m in _metrics(run) if "reward" in m]
    assert steps == list(range(1, st["step"] + 2))           # no step logged twice, none missing
    assert json.load(open(os.path.join(run, "config.json")))["batch_size"] == TINY["batch_size"]


@pytest.mark.parametrize("drift_at,old_logprobs", [("sampling", "engine"), ("sampling", "trainer"), ("update", "engine")])
def test_drift_is_measured_where_the_flag_says(tmp_path, drift_at, old_logprobs):
    """D at a revisit, recomputed by hand from the checkpoints: --drift-at sampling scores the stored response
    with the adapter that sampled this step (the one saved after step 1) against the engine's sampling
    log-probs stored at step 1; --drift-at update scores it with the adapter after this step's update (the
    final one) against its post-update score stored at step 1. Every prompt is in every batch (n_train = B).
    With --old-logprobs trainer the stored scores are the trainer's pi_old, from the drift pass (reused by
    the update)."""
    from peft import PeftModel
    from logprobs import sequence_logprobs
    from models import load_policy
    from spo import policy_drift
    run = str(tmp_path / "run")
    cfg = dict(TINY, n_train=4, drift_at=drift_at, old_logprobs=old_logprobs, save_every=1, output_dir=run)
    T.train(T.Config(steps=1, **cfg))
    after1 = str(tmp_path / "after1")
    shutil.copytree(os.path.join(run, "ckpt"), after1)            # the state and adapter after step 1
    T.train(T.Config(steps=2, resume=run, **cfg))
    st1 = torch.load(os.path.join(after1, "state.pt"), weights_only=False)
    final = torch.load(os.path.join(run, "ckpt", "state.pt"), weights_only=False)
    step2 = final["history"][1]
    assert step2["spo/first_visit_share"] == 0.0
    entries = list(st1["stored"].values())                         # (prompt ids, response ids, scores then, mask)
    base, tok, _ = load_policy(lora=None)
    scorer = PeftModel.from_pretrained(base, after1 + "/adapter" if drift_at == "sampling" else run + "/adapter")
    with torch.no_grad():
        now, mask = sequence_logprobs(scorer, [e[0] for e in entries], [e[1] for e in entries], tok.pad_token_id)
    then = torch.zeros_like(now)
    for k, e in enumerate(entries):
        then[k, :len(e[2])] = torch.tensor(e[2])
    want = policy_drift(then, now, mask).mean().item()
    assert want > 1e-3                                             # the policy moved: D is not trivially 0
    assert step2["spo/drift_mean"] == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_paper_profile_fills_only_what_the_command_line_left_open():
    argv = ["--model", "Qwen/Qwen3-8B", "--batch-size", "64", "--learning_rate", "3e-6"]
    cfg = T.apply_profile(tyro.cli(T.Config, args=argv), argv)
    assert cfg.profile == "paper" and cfg.dataset == "dapo" and cfg.load_in_4bit and cfg.engine == "vllm"
    assert cfg.batch_size == 64 and cfg.learning_rate == 3e-6            # given flags win
    assert (cfg.epsilon, cfg.epsilon_high, cfg.max_completion_length, cfg.offline_samples) == (0.2, 0.28, 8192, 8)
    cpu = T.apply_profile(tyro.cli(T.Config, args=[]), [])
    assert cpu.profile == "cpu" and cpu == dataclasses.replace(T.Config(), profile="cpu")
    with pytest.raises(T.ConfigError, match="--profile"):
        T.apply_profile(T.Config(profile="gpu"), [])


def test_resume_continues_in_the_folder_it_names(tmp_path):
    """A moved or copied run continues where it lies, never in the folder its config.json came from."""
    origin, copy, other = (str(tmp_path / n) for n in ("origin", "copy", "other"))
    for d in (origin, copy, other):
        os.makedirs(os.path.join(d, "ckpt"))
        open(os.path.join(d, "ckpt", "state.pt"), "w").close()     # a checkpoint is there (never loaded here)
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(T.Config(output_dir=origin, steps=5)), f)   # as if copied from origin
    argv = ["--resume", copy, "--steps", "9"]
    cfg = T.apply_profile(tyro.cli(T.Config, args=argv), argv)
    assert (cfg.output_dir, cfg.steps) == (copy, 9)
    T.validate(cfg)                                              # continuing a run in place needs no --overwrite
    argv = ["--resume", copy, "--output-dir", other]             # a fork into another folder ...
    cfg = T.apply_profile(tyro.cli(T.Config, args=argv), argv)
    assert cfg.output_dir == other
    with pytest.raises(T.ConfigError, match=f"--output-dir {other} already holds a run"):
        T.validate(cfg)                                          # ... must not overwrite the run there


def test_loop_matches_recorded_reference(tmp_path):
    """The training step, however it is organised, does what the recorded code did: same metrics, tracker,
    sampler state and adapter for a seeded CPU run (tests/record_reference.py wrote the fixture)."""
    import record_reference as R
    with open(os.path.join(ROOT, "tests", "fixtures", "reference_runs.json")) as f:
        ref = json.load(f)
    for name, want in ref.items():
        got = R.run(name, str(tmp_path / name), **R.LEGACY)
        sampler = got["sampler"] if "rng" in want["sampler"] else got["sampler"]["rng"]   # recorded: RNG alone
        assert sampler == want["sampler"], name                             # the same prompts were drawn
        for k in ("keys", "visits"):
            assert got["tracker"][k] == want["tracker"][k], name
        for k in ("alpha", "beta"):   # the drift D -> rho: float sums whose order length-bucketing changed
            assert got["tracker"][k] == pytest.approx(want["tracker"][k], rel=1e-6), name
        assert len(got["metrics"]) == len(want["metrics"]), name
        for g, w in zip(got["metrics"], want["metrics"]):
            # float noise only: length-bucketed scoring sums in another order (drift, approx_kl differ ~1e-5),
            # and another CPU's kernels (approx_kl ~5e-4 differed by 1.1e-7 on AVX-512)
            assert {k: g[k] for k in w} == pytest.approx(w, rel=1e-4, abs=1e-6, nan_ok=True), (name, w["step"])
        # per-tensor sums, compared as one vector per LoRA matrix kind: Adam turns float noise in near-zero
        # gradients (bucketing's summation order, another CPU's kernels) into up to a third of a single sum whose
        # terms cancel, but the vector moves 0.02-0.03 % (lora_B, which starts at 0) and < 0.01 % (lora_A);
        # measured: --learning-rate 1.9e-4 moves lora_B 5 % (spo) and 21 % (grpo), --no-baseline 47 % (spo)
        assert got["adapter_sums"].keys() == want["adapter_sums"].keys(), name
        for part, tol in (("lora_A", 1e-3), ("lora_B", 1e-2)):
            ks = sorted(k for k in want["adapter_sums"] if part in k)
            g, w = (np.array([s[k] for k in ks]) for s in (got["adapter_sums"], want["adapter_sums"]))
            rel = np.linalg.norm(g - w) / np.linalg.norm(w)
            assert rel < tol, (name, part, rel)


def test_greedy_eval_is_the_temperature_zero_answer(policy):
    """eval/greedy is one T = 0 answer per problem: with sampled evaluation also at T = 0, every one of the
    k samples is that answer, so avg@k, pass@k and maj@k all equal it; at T = 1 they differ from it, and at
    T = 1 with a nucleus of one token they are it again."""
    from data import chat_prompt, embedded_tasks
    from rollout import HFEngine
    model, tok, _ = policy
    _, held = embedded_tasks(8, 12, seed=3)
    fmt = {t.prompt: chat_prompt(tok, t.prompt) for t in held}
    engine = HFEngine(model, tok)
    cold = T.evaluate(T.Config(eval_k=2, eval_temperature=0.0, max_completion_length=12), engine, held, fmt)
    assert 0 < cold["eval/greedy"] < 1
    assert cold["eval/avg@2"] == cold["eval/pass@2"] == cold["eval/maj@2"] == cold["eval/greedy"]
    hot = T.evaluate(T.Config(eval_k=2, eval_temperature=1.0, eval_top_p=1.0, max_completion_length=12), engine,
                     held, fmt)
    assert hot["eval/greedy"] == cold["eval/greedy"] and hot["eval/avg@2"] != hot["eval/greedy"]
    count = {lv: sum(t.level == lv for t in held) for lv in {t.level for t in held}}    # avg@k of each level too
    assert len(count) > 1 and {k for k in hot if "_level" in k} == {f"eval/avg@2_level{lv}" for lv in count}
    by_level = sum(hot[f"eval/avg@2_level{lv}"] * c for lv, c in count.items()) / len(held)
    assert by_level == pytest.approx(hot["eval/avg@2"])
    # --eval-top-p reaches the sampler: at T = 1 a nucleus of one token (top-p -> 0 keeps the likeliest) is greedy
    nucleus = T.evaluate(T.Config(eval_k=2, eval_temperature=1.0, eval_top_p=1e-6, max_completion_length=12),
                         engine, held, fmt)
    assert nucleus == cold


def test_bad_data_is_one_line_before_anything_is_touched(tmp_path):
    """A bad --dataset file ends like a bad flag: `error: FILE:LINE: ...`, exit 1, no traceback, no model
    loaded, and an existing run folder (here with --overwrite) left exactly as it was."""
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    before = sorted((p.relative_to(run), p.read_bytes() if p.is_file() else b"") for p in run.rglob("*"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "What is 2 + 2?" "answer": "4"}\n')
    r = _cli("--dataset", str(bad), "--output-dir", str(run), "--overwrite")
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip() == f"error: {bad}:2: malformed JSON (Expecting ',' delimiter, column 29); each line " \
                               "must be one JSON object"
    assert "Traceback" not in r.stdout + r.stderr and "Loading" not in r.stdout + r.stderr
    assert sorted((p.relative_to(run), p.read_bytes() if p.is_file() else b"") for p in run.rglob("*")) == before
    r = _cli("--dataset", str(tmp_path / "absent.csv"), "--output-dir", str(tmp_path / "new"))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {tmp_path / 'absent.csv'}: no such file"
    assert not (tmp_path / "new").exists()
