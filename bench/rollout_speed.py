"""Generation throughput of the two engines on the same prompts and settings, base model and with a
LoRA adapter (r=16 on all 7 projections), printed as a markdown table.

    python bench/rollout_speed.py [--prompts 64] [--max-new-tokens 32] [--repeats 3]

Tokens/s counts generated tokens; the median of --repeats runs after one warm-up run per engine.
Run it alone: two torch processes on 2 cores slow each other ~10x.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from data import chat_prompt, embedded_tasks  # noqa: E402
from rollout import HFEngine  # noqa: E402
from models import LoraArgs, load_policy  # noqa: E402


def _timed(engine, prompts, n_tok, repeats):
    engine.generate(prompts[:4], n_tok, 1.0, seed=0)                      # warm-up
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        out = engine.generate(prompts, n_tok, 1.0, seed=r)
        rates.append(sum(len(s.completion_ids) for s in out) / (time.perf_counter() - t))
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok, path = load_policy(lora=LoraArgs(r=16))
    with torch.no_grad():                                                  # a trained-looking adapter
        for n, w in model.named_parameters():
            if "lora_B" in n:
                w.normal_(0, 0.01)
    prompts = [chat_prompt(tok, t.prompt) for t in embedded_tasks(n_train=a.prompts, n_eval=0)[0]]
    rows = []
    hf = HFEngine(model, tok, batch_size=a.prompts)
    with model.disable_adapter():
        rows.append(("hf", "base", _timed(hf, prompts, a.max_new_tokens, a.repeats)))
    rows.append(("hf", "LoRA r=16", _timed(hf, prompts, a.max_new_tokens, a.repeats)))
    try:
        from rollout import VLLMEngine
        v = VLLMEngine(path, tok, max_new_tokens=a.max_new_tokens)
        rows.append(("vllm", "base", _timed(v, prompts, a.max_new_tokens, a.repeats)))
        v.load_adapter(model)
        rows.append(("vllm", "LoRA r=16", _timed(v, prompts, a.max_new_tokens, a.repeats)))
    except Exception as e:  # noqa: BLE001 - report, don't hide, a missing engine
        print(f"vllm: skipped ({type(e).__name__}: {e})")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{a.prompts} prompts x {a.max_new_tokens} new tokens, T=1.0, SmolLM2-135M fp32 ({dev})\n")
    print("| engine | weights | tokens/s |\n|---|---|---|")
    for e, w, r in rows:
        print(f"| {e} | {w} | {r:.0f} |")


if __name__ == "__main__":
    main()
