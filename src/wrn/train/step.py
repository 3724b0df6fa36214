"""The training and evaluation steps, built from the config's speed switches (``accel``), and
the two ways a step may differ from plain SGD: sharpness-aware minimisation and a moving average
of the weights.

    train_step = make_train_step(model, optimizer, precision="bf16", device=device, compile=True)
    loss_sum, correct = train_step(images, labels)   # one SGD step; device tensors, no host sync
    logits = make_eval_step(model, precision="bf16", device=device, flip=True)(images)

The loss is cross-entropy (optionally label-smoothed) computed in fp32 from the logits; the
parameters and optimizer state stay fp32. Steps return device tensors only: no host sync inside
a step.

SAM (``sam_rho`` > 0; Foret et al. 2021) takes two forward/backward passes per step. With g the
gradient of the batch loss at the weights w, the first pass moves the weights to w + e(w),

    e(w) = rho * T(w)^2 g / ||T(w) g||_2      T(w) = 1 (SAM), T(w) = |w| + eta element-wise (ASAM)

(ASAM, Kwon et al. 2021, as their code computes it: eta = 0.01, and T = 1 for biases, whose
parameter names do not end in "weight")

the second takes the gradient there, and the weights go back to w (a saved copy, not w + e - e)
before the optimizer's own step applies that gradient with its momentum, Nesterov and weight
decay (wd * w at w, as for plain SGD). The BN running statistics are those of the first pass: they
are saved after it and put back after the second. Under torchrun each pass's backward is one
all-reduce (DDP's): every process perturbs with the gradient of the global batch, so the weights
stay identical and the step does not depend on the number of processes. The loss and accuracy a
step returns are the first pass's (at w).

EMA (``make_ema``): after every optimizer step, ema = d * ema + (1 - d) * w over the parameters
and the floating-point BN buffers (integer buffers, BN's batch count, are copied); the first step
copies w. ``torch.optim.swa_utils.AveragedModel`` holds the average.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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
                    fused_optimizer: bool = True, threads: int | str | None = None, sam_rho: float = 0.0,
                    sam_adaptive: bool = False, ema: AveragedModel | None = None
                    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One SGD step on a batch: returns (summed loss, number correct) as device tensors.

    ``compile``: torch.compile the forward + loss (inductor also compiles the matching backward);
    ``compile_mode``: a torch.compile mode; ``cuda_graphs``: on CUDA with compile, replay the
    compiled graphs as CUDA graphs (ignored on CPU); ``fused_optimizer``: see fast_optimizer;
    ``threads``: CPU threads (None = torch's default, N, or ``auto``: see ThreadTuner);
    ``sam_rho``/``sam_adaptive``: SAM or ASAM (module docstring; 0 = plain SGD); ``ema``: the
    moving average (``make_ema``) to update after each step.
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
    sam = SharpnessAware(model, optimizer, sam_rho, sam_adaptive) if sam_rho > 0 else None

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuner is not None:
            tuner.before_step()
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = fwd(x, y)
        loss.backward()
        # New tensors (not views of CUDA-graph memory, which the next replay overwrites).
        loss_sum, correct = loss.detach() * y.numel(), correct.clone()
        if sam is not None:
            sam.ascend()
            optimizer.zero_grad(set_to_none=True)
            if graphed:
                torch.compiler.cudagraph_mark_step_begin()
            fwd(x, y)[0].backward()  # the gradient at w + e(w)
            sam.restore()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        if tuner is not None:
            tuner.after_step()  # CPU: the step has finished when its ops return
        return loss_sum, correct

    return step


class SharpnessAware:
    """The SAM/ASAM ascent of one step (module docstring): ``ascend`` after the first backward
    moves the weights to w + e(w) and keeps w and the BN buffers; ``restore`` after the second
    puts both back, so the optimizer steps from w with the gradient taken at w + e(w)."""

    ETA = 0.01  # ASAM's offset of |w| (Kwon et al.'s code): a zero weight still moves

    def __init__(self, model: nn.Module, optimizer, rho: float, adaptive: bool):
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        names = {id(p): name for name, p in model.named_parameters()}
        # ASAM scales the weights (conv, linear, BN's gamma), not the biases, as its authors' code does.
        self.scaled = {id(p) for p in self.params if names.get(id(p), "").endswith("weight")}
        self.buffers = list(model.buffers())  # BN running mean/var and batch counts
        self.rho, self.adaptive = rho, adaptive
        self.moved: list[torch.Tensor] = []
        self.saved: list[torch.Tensor] = []
        self.saved_buffers: list[torch.Tensor] = []

    @torch.no_grad()
    def ascend(self) -> None:
        self.moved = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in self.moved]
        self.saved = [p.detach().clone() for p in self.moved]
        self.saved_buffers = [b.detach().clone() for b in self.buffers]
        if not self.moved:
            return
        if self.adaptive:
            magnitude = [p.detach().abs().add_(self.ETA) if id(p) in self.scaled else torch.ones_like(p)
                         for p in self.moved]
            scaled = torch._foreach_mul(grads, magnitude)  # T(w) g
        else:
            scaled = grads
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        # e(w) = rho * T(w)^2 g / ||T(w) g||; the 1e-12 keeps a zero gradient from dividing by 0.
        ascent = torch._foreach_mul(scaled, magnitude) if self.adaptive else list(scaled)
        ascent = torch._foreach_mul(ascent, self.rho / (norm + 1e-12))
        torch._foreach_add_(self.moved, ascent)

    @torch.no_grad()
    def restore(self) -> None:
        if self.moved:
            torch._foreach_copy_(self.moved, self.saved)
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved_buffers)
        self.saved, self.saved_buffers = [], []


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """The moving average of ``model``'s weights and BN buffers (None for ``decay`` 0): a copy
    of the model, in its device and memory format, updated by the train step
    (``ema.update_parameters(model)``); ``ema.module`` is the averaged network to evaluate.
    ``ema.n_averaged`` counts the updates (0: the next one copies the weights)."""
    if not decay:
        return None
    lerp = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _count) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups its tensors by dtype
            lerp(averaged, current, _count)
        else:  # BN's num_batches_tracked: a count, not a quantity to average
            torch._foreach_copy_(averaged, current)

    averaged = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    averaged.eval()  # only ever evaluated: a forward in training mode would move its BN statistics
    return averaged


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
