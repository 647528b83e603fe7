"""--report-to: TensorBoard event files read back with TensorBoard's own reader hold metrics.jsonl's scalars under
the same names, and a resumed run continues the same curves; W&B runs offline, with no account or network."""
import glob
import json
import math
import os

import pytest

import train as T
from test_train import TINY, _metrics


def test_tensorboard_events_are_metrics_jsonl_and_resume_continues_them(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = str(tmp_path / "tb")
    cfg = dict(TINY, report_to="tensorboard", save_every=1, output_dir=run)
    T.train(T.Config(steps=2, **cfg))
    from torch.utils.tensorboard import SummaryWriter
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:    # as if the run had gone on past its checkpoint
        f.write(json.dumps({"step": 3, "reward": 0.123}) + "\n")
    with SummaryWriter(os.path.join(run, "tensorboard")) as w:  # ... and logged that step before it was killed
        w.add_scalar("reward", 0.123, 3)
    T.train(T.Config(steps=3, resume=run, **cfg))               # continues from the step-2 checkpoint
    rows = _metrics(run)
    ea = EventAccumulator(os.path.join(run, "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    steps = [m for m in rows if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for key in ("reward", "loss", "spo/rho_mean", "tracker/brier", "time/step"):
        events = ea.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3], key           # one curve: nothing twice, nothing lost
        assert [e.value for e in events] == pytest.approx([m[key] for m in steps], rel=1e-6), key
    evals = [m for m in rows if "eval/avg@1" in m]
    assert [(e.step, e.value) for e in ea.Scalars("eval/avg@1")] == \
        [(m["step"], pytest.approx(m["eval/avg@1"], rel=1e-6)) for m in evals]
    assert all(math.isfinite(e.value) for e in ea.Scalars("eval/greedy"))


def test_wandb_runs_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)              # the default: offline, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = str(tmp_path / "wb")
    cfg = dict(TINY, report_to="wandb", save_every=1, output_dir=run, offline_samples=0)
    T.train(T.Config(steps=1, **cfg))
    first = open(os.path.join(run, "wandb_id")).read()
    T.train(T.Config(steps=2, resume=run, **cfg))
    assert open(os.path.join(run, "wandb_id")).read() == first  # the resumed run logs into the same W&B run
    files = glob.glob(os.path.join(run, "wandb", "offline-run-*", f"run-{first}.wandb"))
    assert len(files) == 2, files                                # one offline segment per process, one run id
    data = b"".join(open(f, "rb").read() for f in files)
    for key in (b"reward", b"eval/avg@1", b"spo/rho_mean"):      # the metrics.jsonl names
        assert key in data, key
