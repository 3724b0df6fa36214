"""Per-step numerics of the training loop: running sums kept on the device (no host sync per
step), the first non-finite loss, skipping bad batches, and the per-step random seeds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from wrn.errors import UserError


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the run stops, the last good checkpoint stays."""


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, global step, rank, purpose): independent streams per step."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SkipNonFinite:
    """Optimizer wrapper for train.skip_nonfinite: no update from a batch with a NaN/inf gradient.

    It checks the gradients on the host before each update (one sync per step), which is the
    price of skipping; the default (stop on NaN) needs no per-step sync. The forward pass of a
    bad batch also moved the BN running statistics, so those are put back from a copy taken
    before the step (``remember``; BN buffers are small).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        self.optimizer = optimizer
        self.skipped = 0
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.backup = [b.detach().clone() for b in self.buffers]

    def remember(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.backup, self.buffers)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self) -> None:
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.skipped += 1
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.backup)
            return
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


@dataclass
class EpochSums:
    """Running sums on the device (no host sync per step)."""
    loss: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    bad_step: torch.Tensor | None = None  # first step with a non-finite loss, -1 if none

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device), 0,
                   torch.full((), -1, dtype=torch.int64, device=device))

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss.item(), "correct": int(self.correct.item()), "count": self.count}

    @classmethod
    def from_json(cls, data: dict[str, Any], device: torch.device) -> "EpochSums":
        sums = cls.zeros(device)
        sums.loss.fill_(data["loss"])
        sums.correct.fill_(data["correct"])
        sums.count = data["count"]
        return sums
