"""Forward FLOPs by counting conv and linear MACs with forward hooks.

The forward pass runs on the ``meta`` device (shapes only, no arithmetic, no memory), through
stand-in tensors for the parameters, so counting WRN-50-2 at 224x224 is instant and the model
itself is untouched. FLOPs = 2 x MACs; BN, ReLU, pooling and additions are left out, as usual.
A training step costs about 3x the forward FLOPs.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.func import functional_call

from wrn.models.registry import create_model


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    # Each output element sums (in_channels / groups) * kh * kw products.
    return out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out.numel() // out.shape[0] * m.in_features


@contextlib.contextmanager
def _hooks(model: nn.Module, record: Callable[[str, nn.Module, torch.Tensor], None]) -> Iterator[None]:
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: record(name, mod, out))
               for name, m in model.named_modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def meta_forward(model: nn.Module, input_size: int, record: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
    """Run one ``input_size`` x ``input_size`` image through ``model`` on the meta device, calling
    ``record(module_name, module, output)`` after every module. The model is left as it was."""
    in_channels = getattr(model, "in_channels", 3)
    tensors = {k: torch.empty_like(v, device="meta") for k, v in
               [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty(1, in_channels, input_size, input_size, device="meta")
    was_training = model.training
    model.eval()  # no BN statistics updates, no dropout or drop-path
    try:
        with _hooks(model, record), torch.no_grad():
            functional_call(model, tensors, (x,), strict=False)
    finally:
        model.train(was_training)


def forward_flops(model: nn.Module, input_size: int = 32) -> int:
    """Forward FLOPs (2 x MACs of conv and linear layers) for one input_size x input_size image."""
    if input_size < 1:
        raise ValueError(f"input_size={input_size} must be positive: e.g. 32 for CIFAR, 224 for ImageNet")
    macs = 0

    def record(name: str, m: nn.Module, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += _conv_macs(m, out)
        elif isinstance(m, nn.Linear):
            macs += _linear_macs(m, out)

    meta_forward(model, input_size, record)
    return 2 * macs


def model_size(name: str, input_size: int = 32, **kwargs) -> tuple[int, int]:
    """(parameters, forward FLOPs for one image) of ``create_model(name, **kwargs)``, counted on
    the meta device (no memory, no compute; a model whose counting needs real tensors is counted
    on a CPU copy)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    try:
        return params, forward_flops(model, input_size)
    except Exception:  # noqa: BLE001 - the meta device cannot run everything: count a real copy
        return params, forward_flops(create_model(name, **kwargs), input_size)
