"""Optional extensions of the SPO / GRPO core, and SPO for another trainer. Each extension subclasses
`trainer.Trainer` (or plugs into its engine) and overrides only the phases it changes; the core at the top level
never imports them unless a flag asks. `trl_spo.py` is imported by a TRL user's script instead.

- `continuous.py`, `collector.py`  continuous group-free collection on vLLM's request API (--collect continuous)
- `segment_po.py`, `segment.py`    Segment Policy Optimization: SPO-chain and SPO-tree (--algo segment);
                                   `segment.py` (torch only) can be copied alone
- `tools.py`, `sandbox.py`, `sft.py`  tool-integrated rollouts (--tools python), the Python sandbox (stdlib only,
                                   can be copied alone), the warm-ups (--sft-steps; `python -m extensions.sft`)
- `trl_spo.py`                     SPO inside TRL's GRPOTrainer (SPOConfig, SPOTrainer): the integration
"""
