"""Data parallel under torchrun in one class: the same script on 1 process, 8 GPUs or several nodes.

Imports only torch and the standard library, so it can be copied into another trainer.
"""
import datetime
import hashlib
import json
import os

import torch


class Dist:
    """torch.distributed under torchrun (NCCL on GPUs, gloo on CPU); every call is a no-op in one process.

    Data parallel: every rank holds the policy, its own engine, and an identical tracker and sampler
    (same seed, same updates in the same order); rank r generates rows r, r + W, r + 2W, ... of the
    step's global batch, and everything the math needs globally (rewards, drifts, token counts,
    gradients) is gathered or summed, so W ranks compute what one process would on the same batch.
    """

    def __init__(self, timeout_s: int):
        self.world, self.rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        if self.world > 1:
            import torch.distributed as tdist
            self.d = tdist
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                     timeout=datetime.timedelta(seconds=timeout_s))

    def say(self, *a) -> None:
        if self.main:
            print(*a, flush=True)

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.d.all_gather_object(out, obj)
        return out

    def rows(self, local: list, n: int) -> list:
        """Per-row values of the rows this rank owns -> the global list of n rows, on every rank."""
        out = [None] * n
        for r, part in enumerate(self.gather(local)):
            out[r::self.world] = part
        return out

    def local(self, rows: list) -> list:
        """Global row indices -> the local indices (into this rank's rows) of those this rank owns."""
        return [j // self.world for j in rows if j % self.world == self.rank]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            self.d.all_reduce(t)
        return t

    def sum_grads(self, params) -> None:
        """All-reduce (sum) the gradients of `params`; a rank that saw no rows of the mini-batch sends zeros."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.d.all_reduce(p.grad)

    def check_same(self, value, what: str) -> None:
        vals = self.gather(value)
        if any(v != vals[0] for v in vals):
            raise RuntimeError(f"ranks diverged: {what} differs across ranks ({vals}); stopping")

    def barrier(self) -> None:
        if self.world > 1:
            self.d.barrier()

    def close(self) -> None:
        if self.world > 1:
            self.d.destroy_process_group()


def state_hash(tracker, sampler, model) -> str:
    """Fingerprint of what every rank must hold identically: tracker counts, sampler RNG, trainable weights."""
    h = hashlib.sha256(tracker.alpha.tobytes() + tracker.beta.tobytes() + json.dumps(sampler.state_dict()).encode())
    for p in model.parameters():
        if p.requires_grad:
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
