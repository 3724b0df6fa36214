"""Speed switches in one place: device, bf16 autocast, channels_last, torch.compile.

The engine builds its steps here, so the readable path (fp32, eager) and the fast path are the
same model and the same loop. Steps return device tensors only: no host sync inside a step.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use accel.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda") from None


def autocast(precision: str, device: torch.device):
    """bf16 autocast context on CPU or GPU; a null context for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise UserError(f"unknown precision {precision!r}: use fp32 or bf16")


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# A compile pays back its warm-up (~1 min on a 2-core CPU) only over enough steps.
MIN_STEPS_TO_COMPILE = {"cpu": 1500, "cuda": 500}


def should_compile(requested: bool, total_steps: int, device: torch.device) -> tuple[bool, str]:
    """Whether to compile this run, and why (the engine logs the reason)."""
    if not requested:
        return False, "accel.compile=false"
    need = MIN_STEPS_TO_COMPILE.get(device.type, 1000)
    if total_steps < need:
        return False, f"run too short to pay back compile warm-up ({total_steps} < {need} steps): running eager"
    return True, "compiling (accel.compile=true)"


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, precision: str,
                    device: torch.device, compile: bool = False, label_smoothing: float = 0.0
                    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One SGD step on a batch: returns (summed loss, number correct) as device tensors."""

    def forward_backward(x, y):
        with autocast(precision, device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        loss.backward()
        return loss.detach() * y.numel(), (logits.argmax(1) == y).sum()

    fb = torch.compile(forward_backward) if compile else forward_backward

    def step(x, y):
        out = fb(x, y)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    return step


def make_eval_step(model: nn.Module, *, precision: str, device: torch.device, compile: bool = False
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward pass in inference mode; returns fp32 logits."""

    def forward(x):
        with autocast(precision, device):
            return model(x).float()

    fwd = torch.compile(forward) if compile else forward

    @torch.inference_mode()
    def step(x):
        return fwd(x)

    return step
