"""Everything a run writes to --output-dir: metrics.jsonl and the live dashboard (`Logger`), curves.png
(`plot`), atomic checkpoints (`save_checkpoint` / `load_checkpoint`) and LoRA adapter folders (`load_adapter`).

    runs/spo/config.json          the resolved config (written by train.py)
    runs/spo/metrics.jsonl        one line per step and per evaluation
    runs/spo/ckpt/                adapter/ + state.pt (optimizer, tracker, sampler RNG, stored responses, history)
    runs/spo/adapter/             the final adapter, a standard peft folder
    runs/spo/curves.png           reward / held-out, advantage variance, tracker Brier
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys

import torch

from checks import Adapter, adapter_rank
from config import Config, ConfigError


# ============================================================== checkpoints


def load_adapter(model, folder: str, lora_r: int) -> None:
    """LoRA weights saved by save_pretrained (a checkpoint, --eval-only, --init-adapter) into the policy."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    r, err = adapter_rank(folder)
    err = Adapter().error(folder) or err         # the checks validate runs on --init-adapter and --eval-only
    if err:
        raise ConfigError(err)
    if r != lora_r:
        raise ConfigError(f"{folder}: adapter has LoRA rank {r}, but --lora-r is {lora_r}; pass --lora-r {r}")
    set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))


def save_checkpoint(cfg, step: int, tr) -> None:
    """Atomically: write everything to ckpt.tmp, then swap it in with renames."""
    final, tmp, old = (os.path.join(cfg.output_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tr.model.save_pretrained(os.path.join(tmp, "adapter"))
    torch.save({"step": step, **tr.state_dict(), "config": dataclasses.asdict(cfg)}, os.path.join(tmp, "state.pt"))
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: str):
    for name in ("ckpt", "ckpt.old"):          # ckpt.old survives a kill between the two renames
        path = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(path, "state.pt")):
            return path, torch.load(os.path.join(path, "state.pt"), weights_only=False)
    raise ConfigError(f"--resume {run_dir}: no checkpoint in it (expected {run_dir}/ckpt/state.pt)")


# ============================================================== logging


class Logger:
    """metrics.jsonl always; a rich live dashboard on a terminal, plain lines otherwise."""

    def __init__(self, cfg: Config, start: int, source: str | None = None):
        """start: the step a resumed run continues after (0: a fresh run, which starts a fresh log);
        source: the folder resumed from, when it is not --output-dir (a fork starts with its history)."""
        self.cfg = cfg
        path = os.path.join(cfg.output_dir, "metrics.jsonl")
        src = os.path.join(source or cfg.output_dir, "metrics.jsonl")
        rows = []
        if start and os.path.exists(src):    # resuming: keep the lines up to the checkpoint, drop those after it
            with open(src) as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:     # a line cut short by a kill (after the checkpoint)
                        pass
            rows = [r for r in rows if r["step"] <= start]
        # the evaluations so far (a step line has "reward", an evaluation line does not): curves.png and the
        # summary's "start -> end" of a resumed run cover the whole run, not only the part since the resume
        self.evals = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in rows if "reward" not in r]
        with open(path + ".tmp", "w") as f:  # swapped in whole: a kill here leaves the old log, never half of it
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(path + ".tmp", path)
        self.file = open(path, "a")
        self.board = Board(cfg, start, rows) if cfg.report_to != "none" else None
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=cfg.steps, completed=start)
            self.live = Live(self.progress, refresh_per_second=4)
            self.live.start()

    def step(self, m: dict, text: str, reward: float, task) -> None:
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        if self.board:
            self.board.log(m)
        line = (f"step {m['step']:>4}  reward {m['reward']:.3f}  loss {m.get('loss', float('nan')):+.4f}  "
                f"rho {m.get('spo/rho_mean', float('nan')):.3f}  brier {m['tracker/brier']:.3f}  "
                f"len {m['response_length']:.0f}  {m['tokens_per_s']:.0f} tok/s  {m['time/step']:.1f} s")
        if self.live is None:
            print(line, flush=True)
            return
        from rich.console import Group
        from rich.panel import Panel
        self.progress.update(self.task, completed=m["step"])
        ev = "  ".join(f"{k} {v:.3f}" for k, v in (self.evals[-1][1].items() if self.evals else []))
        sample = Panel(f"[bold]{task.prompt}[/] (answer {task.answer}) -> reward {reward:.0f}\n{text[:300]}",
                       title="sample")
        self.live.update(Group(self.progress, line, ev, sample))

    def eval(self, step: int, res: dict) -> None:
        if not res:
            return
        self.evals.append((step, res))
        self.file.write(json.dumps({"step": step, **res}) + "\n")
        self.file.flush()
        if self.board:
            self.board.log({"step": step, **res})
        print(f"eval @ step {step}: " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.file.close()
        if self.board:
            self.board.close()


class Board:
    """--report-to: every metrics.jsonl line, under the same names, to TensorBoard (event files in
    --output-dir/tensorboard) or Weights & Biases (offline into --output-dir/wandb unless WANDB_MODE says
    otherwise; `wandb sync` uploads it later). A resumed run continues the same curves: TensorBoard drops what was
    logged after the checkpoint (purge_step), W&B resumes the run whose id is in --output-dir/wandb_id; a run
    continued into another folder starts its board with the lines it inherited."""

    def __init__(self, cfg: Config, start: int, rows: list):
        self.kind, out = cfg.report_to, cfg.output_dir
        fresh = start == 0 or os.path.realpath(out) != os.path.realpath(cfg.resume or out)   # a new run, or a fork
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            folder = os.path.join(out, "tensorboard")
            if fresh:
                shutil.rmtree(folder, ignore_errors=True)          # --overwrite: not the old run's curves
            self.writer = SummaryWriter(folder, purge_step=None if fresh else start + 1)
        else:
            import wandb
            id_file = os.path.join(out, "wandb_id")
            run_id = None if fresh or not os.path.exists(id_file) else open(id_file).read().strip()
            self.run = wandb.init(project="spo", dir=out, id=run_id, resume="allow" if run_id else None,
                                  mode=os.environ.get("WANDB_MODE", "offline"), config=dataclasses.asdict(cfg))
            with open(id_file, "w") as f:
                f.write(self.run.id)
        if fresh:
            for row in rows:                                        # a fork: the history it starts from
                self.log(row)

    def log(self, m: dict) -> None:
        scalars = {k: float(v) for k, v in m.items() if k != "step" and isinstance(v, (int, float))}
        if self.kind == "tensorboard":
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, m["step"])
            self.writer.flush()
        else:
            self.run.log(scalars, step=m["step"])

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.writer.close()
        else:
            self.run.finish()


def plot(out_dir: str, history: list, evals: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    steps = [m["step"] for m in history]
    ax[0].plot(steps, [m["reward"] for m in history], label="train reward")
    for k in (evals[0][1] if evals else {}):
        ax[0].plot([s for s, _ in evals], [e[k] for _, e in evals], "o-", label=k)
    ax[0].set_title("reward / held-out accuracy")
    ax[0].legend()
    ax[1].plot(steps, [m["adv/raw_var"] for m in history], label="advantage variance")
    ax[1].plot(steps, [m["adv/noBaseline_var"] for m in history], label="no-baseline variance")
    ax[1].set_title("unnormalised advantage variance")
    if "grpo/degenerate_share" in (history[0] if history else {}):       # GRPO: the samples with no signal
        ax[1].plot(steps, [m["grpo/live_raw_var"] for m in history], label="advantage variance, live groups")
        ax[2].plot(steps, [m["grpo/degenerate_share"] for m in history])
        ax[2].set_title("share of samples in groups whose rewards agree")
    else:
        ax[2].plot(steps, [m["tracker/brier"] for m in history], label="tracker Brier score (v_hat_-1 vs r)")
        ax[2].plot(steps, [m["adv/noBaseline_var"] for m in history], label="batch reward variance")
        ax[2].set_title("how well v_hat_-1 predicts r")
        ax[2].legend()
    ax[1].legend()
    for a in ax:
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=90)
    plt.close(fig)


class GracefulStop:
    """SIGINT/SIGTERM: the first lets the step in flight finish, then the loop saves and exits (`signal` holds
    the signal's name); a second stops at once without saving."""

    def __init__(self, say=print):
        self.signal, self.say = None, say
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, sig, _frame) -> None:
        if self.signal:
            raise KeyboardInterrupt(f"second {signal.Signals(sig).name}: stopping without saving")
        self.signal = signal.Signals(sig).name
        self.say(f"\n{self.signal}: finishing step, then saving a checkpoint (again to stop at once)")
