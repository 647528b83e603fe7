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
    from rollout import load_policy
    torch.manual_seed(0)
    return load_policy()
