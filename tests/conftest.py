import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing is downloaded in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def policy():
    """The embedded SmolLM2-135M-Instruct with a fresh LoRA adapter (lora_B = 0: equals the base)."""
    from models import load_policy
    torch.manual_seed(0)
    return load_policy()


@pytest.fixture(scope="session")
def tool_policy(tmp_path_factory):
    """A policy taught (sft.fit) to answer two embedded-tools problems with one tool call, so the tool loop
    can be checked token by token on a real model: (model, tok, path, tasks, prompt texts, demos, adapter dir)."""
    import random

    from data import EMBEDDED_SYSTEM_PROMPT, chat_prompt, embedded_tool_tasks
    from models import load_policy
    from extensions.sft import demonstration, fit
    torch.manual_seed(0)
    model, tok, path = load_policy()
    tasks = embedded_tool_tasks(8, 1, 0, levels=(1, 2, 3))[0][:2]      # expressions to copy
    texts = [chat_prompt(tok, t.prompt, EMBEDDED_SYSTEM_PROMPT) for t in tasks]
    demos = [demonstration(tok, t) for t in tasks]
    loss = fit(model, tok, [tok(x, add_special_tokens=False)["input_ids"] for x in texts], demos, steps=25,
               batch_size=2, lr=2e-3, rng=random.Random(0))
    assert loss < 0.01, f"the demonstrations were not learned (loss {loss})"
    adapter = str(tmp_path_factory.mktemp("tool-adapter"))
    model.save_pretrained(adapter)
    return model, tok, path, tasks, texts, demos, adapter
