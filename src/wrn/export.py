"""ONNX export with a dynamic batch dimension, written atomically, and an onnxruntime check.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): the torch.export-based one needs the
extra ``onnxscript`` package, and these nets (convs, BN, ReLU, pooling, linear) export exactly
with the classic one. onnx/onnxruntime are the optional extra ``pip install 'wrn[onnx]'``.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

from wrn.errors import UserError
from wrn.fsio import fsync_path, replacing

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _input(model: nn.Module, input_size: int | None, batch: int) -> torch.Tensor:
    size = getattr(model, "default_input_size", 32) if input_size is None else input_size
    if size < 1:
        raise UserError(f"--input {size} must be a positive image size: e.g. 32 or 224")
    device = next(model.parameters()).device
    return torch.randn(batch, getattr(model, "in_channels", 3), size, size, device=device)


def export_onnx(model: nn.Module, file: str | os.PathLike, input_size: int | None = None,
                opset: int = DEFAULT_OPSET) -> str:
    """Export ``model`` (in eval mode) to ``file``: input ``images`` [batch, C, S, S] -> ``logits``
    [batch, classes], batch dynamic, S = ``input_size`` (default: the model's own, 32 or 224)."""
    file = os.fspath(file)
    folder = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(folder):
        raise UserError(f"folder {folder} does not exist: create it or choose another --onnx path")
    x = _input(model, input_size, batch=1)
    was_training = model.training
    model.eval()
    try:
        with replacing(file) as tmp, torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter announces its own deprecation; the message is for us, not the user.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*opset version .* is not supported.*")
            try:
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset,
                                  do_constant_folding=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            except RuntimeError as e:
                if "opset" in str(e).splitlines()[0]:
                    raise UserError(f"opset {opset} is not supported by this PyTorch's ONNX exporter: "
                                    f"use --opset {DEFAULT_OPSET} (the default) or another up to 20") from None
                raise
            fsync_path(tmp)
    finally:
        model.train(was_training)
    return file


def verify_onnx(model: nn.Module, file: str | os.PathLike, input_size: int | None = None, batch: int = 2) -> float:
    """Max |onnxruntime - PyTorch| over the logits of a random batch (not 1: checks the dynamic batch)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install 'wrn[onnx]' (or pass --no-verify)") from None
    x = _input(model, input_size, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x).float().cpu().numpy()
    finally:
        model.train(was_training)
    session = onnxruntime.InferenceSession(os.fspath(file), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
    return float(abs(got - expected).max())
