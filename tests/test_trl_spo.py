"""SPO inside TRL's GRPOTrainer (extensions/trl_spo.py) with the pinned TRL, for real: the internals it overrides,
a run with the embedded model and a LoRA peft_config, a resume that continues exactly, and the inputs it refuses."""
import inspect
import json
import os

import pytest
import torch
import trl
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from data import embedded_tasks
from extensions.trl_spo import STATE, SPOConfig, SPOTrainer
from models import embedded_model_path
from rewards import RewardFn
from spo import spo_advantages

ARGS = dict(seed=0, use_cpu=True, bf16=False, report_to="none", learning_rate=1e-4, per_device_train_batch_size=4,
            steps_per_generation=2, max_steps=6, max_completion_length=8, temperature=1.0, spo_offline_samples=2,
            save_strategy="steps", save_steps=2, logging_steps=2, gradient_checkpointing=False)  # 3 batches of 8
LORA = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def test_the_trl_internals_it_overrides_are_the_pinned_ones(tmp_path):
    """A new TRL that renames or reshapes these fails here, not in a user's run."""
    tomllib = pytest.importorskip("tomllib")            # Python >= 3.11
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {e: [d for d in extras[e] if d.startswith("trl")] for e in ("trl", "bench", "test")} == \
        {e: [f"trl=={trl.__version__}"] for e in ("trl", "bench", "test")}   # the version installed is the pinned one
    with pytest.raises(ValueError, match="at least 2 generations"):        # what SPOConfig lifts, still there
        GRPOConfig(output_dir=str(tmp_path), num_generations=1, per_device_train_batch_size=2, use_cpu=True)
    params = {name: list(inspect.signature(getattr(GRPOTrainer, name)).parameters)[:6] for name in
              ("_prepare_inputs", "_calculate_rewards", "_generate_and_score_completions", "_save_checkpoint",
               "_load_optimizer_and_scheduler", "_get_per_token_logps_and_entropies")}
    assert params == {"_prepare_inputs": ["self", "generation_batch"],
                      "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
                      "_generate_and_score_completions": ["self", "inputs"],
                      "_save_checkpoint": ["self", "model", "trial"],
                      "_load_optimizer_and_scheduler": ["self", "checkpoint"],
                      "_get_per_token_logps_and_entropies": ["self", "model", "input_ids", "attention_mask",
                                                             "logits_to_keep", "batch_size"]}
    src = inspect.getsource(GRPOTrainer._prepare_inputs)                   # when TRL generates, and from what
    assert "self._step % generate_every == 0 or self._buffered_inputs is None" in src
    assert "self._generate_and_score_completions(generation_batch)" in src
    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards_per_func = self._calculate_rewards(" in src and '"advantages": advantages' in src


@pytest.fixture(scope="module")
def data():
    tasks = embedded_tasks(16, 0, seed=0)[0]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": t.prompt}], "answer": t.answer} for t in tasks])


def run(out, data, seen=None, reward=None, resume=None, **kw):
    rf = RewardFn()

    def score(completions, answer, prompts, **_):
        if seen is not None:
            seen.append([p[-1]["content"] for p in prompts])
        return [reward if reward is not None else rf(c[0]["content"], a) for c, a in zip(completions, answer)]
    torch.manual_seed(0)
    tr = SPOTrainer(model=embedded_model_path(), reward_funcs=score, args=SPOConfig(output_dir=out, **{**ARGS, **kw}),
                    train_dataset=data, peft_config=LORA)
    tr.train(resume_from_checkpoint=resume)
    return tr


def test_spo_in_trl_draws_tracks_and_resumes_exactly(tmp_path, data):
    seen, out = [], str(tmp_path / "a")
    tr = run(out, data, seen)
    keys = [p[-1]["content"] for p in data["prompt"]]
    offline = json.load(open(os.path.join(out, "offline_values.json")))      # Eq. 6: n0 = 2 rewards a prompt
    assert list(offline) == keys and all(len(v) == 2 and set(v) <= {0.0, 1.0} for v in offline.values())
    init, batches = seen[:4], seen[4:]                                       # 32 offline samples in chunks of 8
    assert sorted(sum(init, [])) == sorted(keys * 2)
    assert len(batches) == 3 and all(len(b) == len(set(b)) == 8 for b in batches)   # one response, distinct prompts
    visits = dict(zip(tr.tracker.keys, tr.tracker.visits))
    drawn = sum(batches, [])
    assert {k: drawn.count(k) for k in keys} == {k: int(visits[k]) for k in keys}   # tracked once per response
    assert set(tr.stored) == set(drawn) and all(len(c) == len(lp) > 0 for _, c, lp in tr.stored.values())
    logged = [h for h in tr.state.log_history if "spo/rho_mean" in h]
    assert len(logged) == 3 and all(0.875 <= h["spo/rho_mean"] <= 0.96 for h in logged)
    assert logged[0]["spo/first_visit_share"] == 1.0 and logged[0]["spo/drift_mean"] == 0.0
    assert all(h["adv/noBaseline_var"] >= 0 and h["tracker/brier"] <= 1 for h in logged)
    # resumed from the step-4 checkpoint (after two batches) into another folder: the same third batch
    ckpt = os.path.join(out, "checkpoint-4")
    assert os.path.exists(os.path.join(ckpt, STATE))
    seen_b = []
    again = run(str(tmp_path / "b"), data, seen_b, resume=ckpt)
    assert seen_b == [batches[2]]
    assert again.tracker.state_dict() == tr.tracker.state_dict()
    a, b = tr.model.state_dict(), again.model.state_dict()
    lora = [k for k in a if "lora_" in k]
    assert lora and max((a[k] - b[k]).abs().max().item() for k in lora) < 1e-6


def test_spo_advantages_replace_the_group_ones(tmp_path, data):
    """Eq. 8-9 over the batch: A = (r - v_hat_-1) normalised, from the tracker as it was before the batch."""
    got = []

    class Spy(SPOTrainer):
        def _generate_and_score_completions(self, inputs):
            before = self.tracker.value([self.spo_keys[i] for i in self.spo_drawn]) if self.spo_ready else None
            out = super()._generate_and_score_completions(inputs)
            if before is not None:
                got.append((before, self.spo_rewards.copy(), out["advantages"].clone()))
            return out
    tr = Spy(model=embedded_model_path(), reward_funcs=lambda completions, answer, **_: [
        RewardFn()(c[0]["content"], a) for c, a in zip(completions, answer)],
        args=SPOConfig(output_dir=str(tmp_path), **{**ARGS, "max_steps": 2, "save_strategy": "no"}),
        train_dataset=data, peft_config=LORA)
    tr.train()
    (v, r, adv), = got
    assert torch.allclose(adv, spo_advantages(r, v).to(adv))                 # not GRPO's: G = 1 would give 0
    assert abs(adv.mean().item()) < 1e-5 and adv.std().item() == pytest.approx(1, abs=1e-3)


def test_what_it_refuses(tmp_path, data):
    for kw, msg in ((dict(num_generations=2), "num_generations must be 1"),
                    (dict(save_steps=3), "save_steps 3 must be a multiple of steps_per_generation 2"),
                    (dict(spo_offline_values=str(tmp_path / "none.json")), "is not a file"),
                    (dict(spo_rho_min=0.99), "spo_rho_min <= spo_rho_max")):
        with pytest.raises(ValueError, match=msg):
            SPOConfig(output_dir=str(tmp_path), **{**ARGS, **kw})
    twice = Dataset.from_list([{"prompt": "What is 1 + 1?", "answer": "2"}] * 2)
    with pytest.raises(ValueError, match="row 1 repeats the prompt"):
        SPOTrainer(model=embedded_model_path(), reward_funcs=lambda **_: [], train_dataset=twice,
                   args=SPOConfig(output_dir=str(tmp_path), **ARGS))
    with pytest.raises(ValueError, match="draws 8 distinct prompts"):
        SPOTrainer(model=embedded_model_path(), reward_funcs=lambda **_: [], train_dataset=data.select(range(4)),
                   args=SPOConfig(output_dir=str(tmp_path), **ARGS))
    with pytest.raises(ValueError, match=r"scored 2\.0 .* need every reward in \[0, 1\]"):
        run(str(tmp_path / "r"), data, reward=2.0)
