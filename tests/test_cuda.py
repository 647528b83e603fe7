"""The CUDA paths (skipped without a GPU and bitsandbytes): `load_policy` in NF4 on a small model with
Qwen3's architecture (grouped-query attention, untied head), built from a config with random weights.

Pins what bench/gpu_memory.py found on Qwen3-8B's shapes: after peft's k-bit preparation no frozen weight is
left in fp32 (fp32 norms made SDPA fall back to materialised attention scores), an unpadded micro-batch takes
SDPA's causal kernel (memory linear in the length) and agrees with the padded path, and a PPO update trains
the adapter; and train.py's loop with the embedded model (bench/cuda_check.py at tiny sizes) trains, saves and
resumes on CUDA in bf16 and NF4. `python -m pytest tests/test_cuda.py` on a GPU machine re-checks it in a minute.
"""
import importlib.util
import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                                reason="needs CUDA and bitsandbytes")

HEADS, KV, DIM, VOCAB = 8, 2, 512, 2048


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

    from models import LoraArgs, load_policy
    folder = str(tmp_path_factory.mktemp("qwen3-small"))
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=4 * DIM, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=DIM // HEADS,
                      tie_word_embeddings=False, max_position_embeddings=16384)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>",
                            eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    return load_policy(folder, LoraArgs(r=8, alpha=16), load_in_4bit=True)


def test_no_frozen_weight_left_in_fp32(qlora):
    model, _, _ = qlora
    fp32 = [n for n, p in model.named_parameters() if p.dtype == torch.float32 and "lora_" not in n]
    assert not fp32, fp32[:3]
    assert any(p.dtype == torch.uint8 for p in model.parameters())             # the NF4 base
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_unpadded_micro_batch_is_linear_in_memory_and_matches_padded(qlora):
    from logprobs import sequence_logprobs
    model, tok, _ = qlora
    g = torch.Generator().manual_seed(0)
    L = 8192
    prompt, comp = torch.randint(3, VOCAB, (64,), generator=g).tolist(), torch.randint(3, VOCAB, (L,), generator=g).tolist()
    model.eval()
    with torch.no_grad():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        alone, _ = sequence_logprobs(model, [prompt], [comp], tok.pad_token_id)       # no mask: causal kernel
        peak = torch.cuda.max_memory_allocated() - base
        scores = HEADS * (L + 64) ** 2 * 2                                            # one layer's bf16 scores
        assert peak < scores / 2, f"peak {peak / 2**20:.0f} MiB: attention scores were materialised"
        short = comp[:256]                                                             # padded beside a longer row
        both, _ = sequence_logprobs(model, [prompt, prompt[:10]], [short, short[:100]], tok.pad_token_id)
        one, _ = sequence_logprobs(model, [prompt], [short], tok.pad_token_id)
    assert torch.isfinite(alone).all() and (alone <= 0).all()
    assert (both[0] - one[0]).abs().max() < 0.1                  # masked and mask-free paths agree (bf16, NF4)
    model.train()


def test_qlora_ppo_update_trains_the_adapter(qlora):
    from logprobs import sequence_logprobs
    from spo import policy_loss
    model, tok, _ = qlora
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    p_ids, c_ids = [[5, 6, 7, 8]] * 2, [[9, 10, 11], [12, 13, 14]]
    with torch.no_grad():
        old, _ = sequence_logprobs(model, p_ids, c_ids, tok.pad_token_id)
    logp, mask = sequence_logprobs(model, p_ids, c_ids, tok.pad_token_id)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0], device=logp.device), mask)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, (p.detach() for p in params)))


@pytest.mark.parametrize("nf4", [False, True], ids=["bf16", "qlora-nf4"])
def test_loop_trains_saves_and_resumes_on_cuda(tmp_path, nf4):
    """train.py's loop on CUDA with the embedded model and the HF engine: 2 steps, a checkpoint, a resume to 3.
    bf16 takes pi_old from the engine, so the free engine-vs-trainer check runs every step; NF4 recomputes it
    (the CLI implies --old-logprobs trainer with --load-in-4bit; a Config is told), its engine being the policy
    itself. The CPU tests never showed the CPU/CUDA tensor mix-ups this path once had."""
    import train as T
    from logprobs import SYNC_TOLERANCE
    run = str(tmp_path / "run")
    cfg = dict(batch_size=4, n_train=8, n_eval=4, offline_samples=2, max_completion_length=8, micro_batch_size=4,
               eval_every=0, eval_k=1, engine="hf", sft_steps=0, load_in_4bit=nf4,
               old_logprobs="trainer" if nf4 else "engine")
    h = T.train(T.Config(steps=2, save_every=1, output_dir=run, **cfg))["history"]
    assert [m["step"] for m in h] == [1, 2]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in h)
    if not nf4:
        assert all(m["sync/mean"] < SYNC_TOLERANCE for m in h)
    assert os.path.exists(os.path.join(run, "ckpt", "state.pt"))
    again = T.train(T.Config(steps=3, resume=run, output_dir=run, **cfg))["history"]
    assert [m["step"] for m in again] == [1, 2, 3] and [m["reward"] for m in again[:2]] == [m["reward"] for m in h]
