"""The training and evaluation steps, built from the config's speed switches (``accel``).

    train_step = make_train_step(model, optimizer, precision="bf16", device=device, compile=True)
    loss_sum, correct = train_step(images, labels)   # one SGD step; device tensors, no host sync
    logits = make_eval_step(model, precision="bf16", device=device, flip=True)(images)

The loss is cross-entropy (optionally label-smoothed) computed in fp32 from the logits; the
parameters and optimizer state stay fp32. Steps return device tensors only: no host sync inside
a step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.errors import UserError
from wrn.train.accel import COMPILE_MODES, PRECISIONS, autocast, compile_cache_dir, fast_optimizer, make_thread_tuner


def _compile(fn: Callable, device: torch.device, compile_mode: str | None, cuda_graphs: bool) -> Callable:
    compile_cache_dir()
    mode = compile_mode if compile_mode not in (None, "default") else None
    if mode is not None and mode not in COMPILE_MODES:
        raise UserError(f"unknown compile mode {compile_mode!r}: use one of {', '.join(COMPILE_MODES)}")
    if cuda_graphs and device.type == "cuda" and mode in (None, "max-autotune-no-cudagraphs"):
        # CUDA graph trees: a whole forward (and backward) replays as one launch.
        mode = "reduce-overhead" if mode is None else "max-autotune"
    # Fixed shapes: a different last batch recompiles once rather than making every graph dynamic.
    return torch.compile(fn, mode=mode, dynamic=False)


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, precision: str,
                    device: torch.device, compile: bool = False, label_smoothing: float = 0.0,
                    compile_mode: str | None = None, cuda_graphs: bool = True,
                    fused_optimizer: bool = True, threads: int | str | None = None
                    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One SGD step on a batch: returns (summed loss, number correct) as device tensors.

    ``compile``: torch.compile the forward + loss (inductor also compiles the matching backward);
    ``compile_mode``: a torch.compile mode; ``cuda_graphs``: on CUDA with compile, replay the
    compiled graphs as CUDA graphs (ignored on CPU); ``fused_optimizer``: see fast_optimizer;
    ``threads``: CPU threads (None = torch's default, N, or ``auto``: see ThreadTuner).
    The loss is computed in fp32 from the (bf16) logits; the parameters stay fp32.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use fp32 or bf16")
    if fused_optimizer:
        fast_optimizer(optimizer, device)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(precision, device):
            logits = model(x)  # [B, classes], bf16 under autocast
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        return loss, (logits.argmax(1) == y).sum()

    fwd = _compile(forward_loss, device, compile_mode, cuda_graphs) if compile else forward_loss
    graphed = compile and cuda_graphs and device.type == "cuda"
    tuner = make_thread_tuner(threads, device)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuner is not None:
            tuner.before_step()
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = fwd(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if tuner is not None:
            tuner.after_step()  # CPU: the step has finished when its ops return
        # New tensors (not views of CUDA-graph memory, which the next replay overwrites).
        return loss.detach() * y.numel(), correct.clone()

    return step


def make_eval_step(model: nn.Module, *, precision: str, device: torch.device, compile: bool = False,
                   compile_mode: str | None = None, cuda_graphs: bool = True, flip: bool = False
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward pass in inference mode; returns fp32 logits. ``flip`` (test-time augmentation)
    also classifies each image mirrored left-right, as training's augmentation flips, and returns
    the log of the two softmaxes' mean: logits of the averaged prediction (softmax, argmax and
    cross-entropy read them as they read logits), for twice the compute."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use fp32 or bf16")

    def logits(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return model(x).float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not flip:
            return logits(x)
        # The mirror keeps the batch's memory format (flip may return it in NCHW memory).
        mirrored = x.flip(3).contiguous(memory_format=torch.channels_last
                                        if x.is_contiguous(memory_format=torch.channels_last)
                                        else torch.contiguous_format)
        both = torch.stack((logits(x).log_softmax(1), logits(mirrored).log_softmax(1)))
        return both.logsumexp(0) - math.log(2)

    fwd = _compile(forward, device, compile_mode, cuda_graphs) if compile else forward
    graphed = compile and cuda_graphs and device.type == "cuda"

    @torch.inference_mode()
    def step(x: torch.Tensor) -> torch.Tensor:
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        out = fwd(x)
        return out.clone() if graphed else out

    return step
