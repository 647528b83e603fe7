"""Record what a short seeded CPU run produces, so a refactor of train.py can be checked to change nothing.

    python tests/record_reference.py        # rewrites tests/fixtures/reference_runs.json
    python tests/record_reference.py grpo   # re-records that run only, keeps the others

Run it on the code whose behaviour is the reference (it was recorded before the loop was split into
phases), then keep the file: tests/test_train.py::test_loop_matches_recorded_reference replays each
run and compares metrics, tracker, sampler and adapter. "grpo" was re-recorded when GRPO's prompt draw
became shuffled epochs (a deliberate change of behaviour); "spo" is the original recording.
"""
import hashlib
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RUNS = {  # small enough for CI, long enough that every phase runs (drift on revisits, two mini-batches)
    "spo": dict(algo="spo", steps=3, batch_size=4, n_train=6, n_eval=3, offline_samples=2, max_completion_length=8,
                micro_batch_size=2, eval_every=2, eval_k=2, engine="hf", save_every=0),
    "grpo": dict(algo="grpo", group_size=2, steps=3, batch_size=4, n_train=6, n_eval=3, max_completion_length=16,
                 micro_batch_size=2, eval_every=0, eval_k=1, engine="hf", save_every=0),
}
VOLATILE = ("time/", "tokens_per_s")      # wall-clock figures differ run to run
# Options added after the recording whose defaults change numerics: the replay sets them to the old behaviour.
LEGACY: dict = dict(old_logprobs="trainer", system_prompt=None, rho_min=0.875, rho_max=0.96, drift_at="update",
                    eval_temperature=1.0, eval_top_p=1.0, embedded_levels="1,1,1,2,4", sft_steps=0,
                    learning_rate=2e-4, temperature=1.0)


def fingerprint(run_dir: str) -> dict:
    """Everything a run leaves that a refactor must not change, as JSON-able numbers."""
    from safetensors.torch import load_file
    state = torch.load(os.path.join(run_dir, "ckpt", "state.pt"), weights_only=False)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith(VOLATILE)} for line in f]
    weights = load_file(os.path.join(run_dir, "adapter", "adapter_model.safetensors"))
    sums = {k: float(v.double().sum()) for k, v in sorted(weights.items())}
    digest = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()
    return {"metrics": metrics, "tracker": state["tracker"], "sampler": state["sampler"],
            "adapter_sums": sums, "adapter_sha256": digest}


def run(name: str, out: str, **extra) -> dict:
    import train as T
    cfg = T.Config(output_dir=out, overwrite=True, **RUNS[name], **extra)
    T.train(cfg)
    return fingerprint(out)


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    path = os.path.join(ROOT, "tests", "fixtures", "reference_runs.json")
    names = sys.argv[1:] or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        sys.exit(f"error: unknown run(s) {unknown}; choose from {list(RUNS)}")
    ref = {}
    if sys.argv[1:]:
        with open(path) as f:
            ref = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:          # with LEGACY, as the test replays it
            ref[name] = {"config": RUNS[name], **run(name, os.path.join(tmp, name), **LEGACY)}
    with open(path, "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {path}")
