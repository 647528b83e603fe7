"""The paper profile's trainer memory and throughput, measured on one CUDA GPU (no download needed).

    python bench/gpu_memory.py                       # Qwen3-8B's shapes, NF4 + LoRA r 32, 2048 + 8192 tokens
    python bench/gpu_memory.py --layers 4 --completion 1024     # a quick look at smaller sizes

Builds a model with Qwen3-8B's exact configuration (36 layers, hidden 4096, MLP 12288, 32 query / 8 KV
heads, vocabulary 151,936, untied embeddings) from its config with random weights, saves it, and loads it
through the project's own `models.load_policy` (NF4 double-quant, bf16 compute, peft's k-bit preparation
with gradient checkpointing, LoRA on the 7 projections). Then one PPO micro-batch (1 sequence of
--prompt + --completion tokens) through `logprobs.sequence_logprobs` and `spo.policy_loss`, recording
torch.cuda.max_memory_allocated per phase: weights, old log-probs (no grad), forward, backward, optimizer
step; and tokens/s of the no-grad pass and of forward + backward, from which one paper-profile step
(batch 256, 4 mini-batches, drift pass over up to 2 x 256 sequences) is estimated, generation excluded.
Needs a tokenizer folder (--tokenizer; any: the token ids are random); prints a table.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from logprobs import sequence_logprobs  # noqa: E402

from models import LoraArgs, load_policy  # noqa: E402
from spo import policy_loss  # noqa: E402

GB = 1e9


def build(folder: str, layers: int, tokenizer: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config
    cfg = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, torch_dtype="bfloat16")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=36)
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--completion", type=int, default=8192)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--tokenizer", required=True, help="a folder with any tokenizer (token ids are random)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    folder = tempfile.mkdtemp(prefix="qwen3-8b-shape-")
    t0 = time.time()
    build(folder, a.layers, a.tokenizer)
    print(f"built and saved a random Qwen3-8B-shaped model ({a.layers} layers) in {time.time() - t0:.0f} s", flush=True)

    rows = []
    torch.cuda.reset_peak_memory_stats()
    model, tok, _ = load_policy(folder, LoraArgs(a.lora_r, 2 * a.lora_r), load_in_4bit=True)
    weights = torch.cuda.memory_allocated()
    rows.append(("weights (NF4 base + bf16/fp32 rest + LoRA), after load", weights, torch.cuda.max_memory_allocated()))
    dtypes = {}
    for n, prm in model.named_parameters():
        dtypes[str(prm.dtype)] = dtypes.get(str(prm.dtype), 0) + prm.numel() * prm.element_size()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 151936, (a.prompt,), generator=g).tolist()
    comp = torch.randint(0, 151936, (a.completion,), generator=g).tolist()
    n_tok = a.prompt + a.completion

    def phase(name, fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.time()
        out = fn()
        torch.cuda.synchronize()
        rows.append((name, torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()))
        return out, time.time() - t

    model.train()
    with torch.no_grad():
        (old, _), _ = phase("old log-probs (no grad, 1 sequence)",
                            lambda: sequence_logprobs(model, [prompt], [comp], tok.pad_token_id, 1.0, 1))
    (logp, mask), _ = phase("forward with grad (checkpointed)",
                            lambda: sequence_logprobs(model, [prompt], [comp], tok.pad_token_id, 1.0, 1))
    loss, _ = policy_loss(logp, old, torch.tensor([1.0], device=logp.device), mask)
    phase("backward", loss.backward)
    del logp, loss
    phase("optimizer step (AdamW moments appear)", lambda: opt.step())
    opt.zero_grad(set_to_none=True)

    nograd, fwdbwd = [], []
    for _ in range(a.repeats):
        with torch.no_grad():
            torch.cuda.synchronize()
            t = time.time()
            sequence_logprobs(model, [prompt], [comp], tok.pad_token_id, 1.0, 1)
            torch.cuda.synchronize()
            nograd.append(time.time() - t)
        torch.cuda.synchronize()
        t = time.time()
        lp, mk = sequence_logprobs(model, [prompt], [comp], tok.pad_token_id, 1.0, 1)
        policy_loss(lp, old, torch.tensor([1.0], device=lp.device), mk)[0].backward()
        torch.cuda.synchronize()
        fwdbwd.append(time.time() - t)
        opt.zero_grad(set_to_none=True)
    t_ng, t_fb = min(nograd), min(fwdbwd)
    # one paper-profile step without generation: old log-probs over 256 sequences, forward + backward over 256
    # (4 mini-batches, 1 epoch), drift pass over the 256 new + up to 256 stored responses
    step = 256 * t_ng + 256 * t_fb + 512 * t_ng
    print("\n| phase | allocated after (GB) | peak during (GB) |\n|---|---|---|")
    for name, now, peak in rows:
        print(f"| {name} | {now / GB:.2f} | {peak / GB:.2f} |")
    print(f"\nparameter bytes by dtype: { {k: round(v / GB, 2) for k, v in dtypes.items()} }")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, sequence {a.prompt} + {a.completion} tokens, "
          f"attention {model.config._attn_implementation}")
    print(f"no-grad log-prob pass: {t_ng:.2f} s a sequence = {n_tok / t_ng:,.0f} tokens/s")
    print(f"forward + backward:    {t_fb:.2f} s a sequence = {n_tok / t_fb:,.0f} tokens/s")
    print(f"estimated paper-profile step without generation (256 old + 256 fwd/bwd + 512 drift sequences): "
          f"{step / 60:.1f} min")
    print("JSON " + json.dumps({"rows": rows, "dtypes": dtypes, "t_nograd": t_ng, "t_fwdbwd": t_fb, "step_s": step}))


if __name__ == "__main__":
    main()
