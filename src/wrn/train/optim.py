"""SGD with the paper's settings, learning-rate schedules, lr/wd scaling with the batch size.

The schedule is a pure function of the global step, so a resumed run sets exactly the lr the
uninterrupted run would have had: nothing about the schedule needs saving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from wrn.train.config import OptimConfig


@dataclass(frozen=True)
class Hyper:
    """The lr, weight decay and warmup a run actually uses (after batch-size scaling)."""
    lr: float
    weight_decay: float
    warmup_epochs: float
    warmup_lr: float = 0.0  # 0 = a linear warm-up to lr; > 0 = this constant lr during it


def scaled(cfg: OptimConfig, batch_size: int, epochs: int) -> Hyper:
    """lr grows linearly with the batch (Goyal et al. 2017), with warmup; so does a constant warm-up lr.

    Weight decay is kept unchanged on purpose: what matters with BN is roughly lr x wd per
    update, and with s times the batch there are s times fewer updates per epoch, so s x lr with
    the same wd keeps the decay applied per epoch (lr x wd x steps) where the recipe had it. A
    larger batch with no warmup asked for gets min(5, epochs / 10) epochs of it.
    """
    if not cfg.scale_with_batch or batch_size == cfg.base_batch_size:
        return Hyper(cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr)
    factor = batch_size / cfg.base_batch_size
    warmup = cfg.warmup_epochs
    if factor > 1 and warmup == 0:
        warmup = min(5.0, epochs / 10)
    return Hyper(cfg.lr * factor, cfg.weight_decay, warmup, cfg.warmup_lr * factor)


def param_groups(model: nn.Module, weight_decay: float, wd_on_bn_bias: bool) -> list[dict]:
    """One group decaying everything (the paper), or BN weights and biases (1-d) without decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if wd_on_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, hyper: Hyper) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, hyper.weight_decay, cfg.wd_on_bn_bias), lr=hyper.lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov)


@dataclass(frozen=True)
class Schedule:
    """lr as a function of the global step (0-based: the lr used for that step).

    ``total_steps`` (default ``epochs`` x ``steps_per_epoch``) is the run's length; when a budget
    (train.steps) makes it differ, the schedule keeps its shape: the warm-up and the milestones
    stay at the same fractions of training (the warm-up: unless fixed in steps, optim.warmup_steps).
    """
    cfg: OptimConfig
    hyper: Hyper
    steps_per_epoch: int
    epochs: int
    total_steps: int | None = None

    def __call__(self, step: int) -> float:
        base = self.hyper.lr
        recipe = self.epochs * self.steps_per_epoch  # steps of the recipe as written, in epochs
        total = self.total_steps or recipe
        per_epoch = self.steps_per_epoch * total / recipe  # steps per recipe epoch after stretching
        warm = self.cfg.warmup_steps or round(self.hyper.warmup_epochs * per_epoch)
        if step < warm:
            if self.hyper.warmup_lr > 0:  # a constant, lower lr first (He et al.: 0.01 for ResNet-110/1001)
                return self.hyper.warmup_lr
            return base * (step + 1) / warm  # a linear ramp ending at the base lr
        kind = self.cfg.schedule
        if kind == "step":  # drops at (recipe) epoch boundaries, as in the paper
            return base * self.cfg.gamma ** sum(step >= round(m * per_epoch) for m in self.cfg.milestones)
        progress = (step - warm) / max(1, total - warm)  # in [0, 1)
        if kind == "cosine":
            return base * 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "onecycle":  # linear decay to zero after the warmup peak
            return base * (1.0 - progress)
        raise ValueError(f"unknown schedule {kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
