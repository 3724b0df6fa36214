"""`wrn export CHECKPOINT --onnx FILE`: ONNX with a dynamic batch, checked against PyTorch."""

from __future__ import annotations

import argparse
import os

HELP = ("export a trained checkpoint to ONNX (dynamic batch, fp32, traced on the CPU: no accel.* keys apply), "
        "verified with onnxruntime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory or its checkpoint/ directory")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--input", type=int, default=None, metavar="SIZE",
                        help="image size of the exported input (default: 32, 224 for ImageNet nets)")
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset version (default 17)")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="a run trained with train.ema: its moving average (ema, the default) or the trained "
                             "weights (raw)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime comparison with PyTorch's outputs")


def run(args: argparse.Namespace) -> int:
    from wrn import load_checkpoint
    from wrn.export import DEFAULT_OPSET, export_onnx, verify_onnx

    model, state = load_checkpoint(args.checkpoint, weights=args.weights)
    model = model.cpu()
    opset = args.opset or DEFAULT_OPSET
    file = export_onnx(model, args.onnx, args.input, opset)
    size = getattr(model, "default_input_size", 32) if args.input is None else args.input
    name = getattr(model, "model_args", {}).get("name", type(model).__name__)
    averaged = ", the moving average of its weights" if state.get("weights") == "ema" else ""
    print(f"wrote {file} ({os.path.getsize(file) / 1e6:.1f} MB): {name}{averaged}, opset {opset}, "
          f"input images [batch, {getattr(model, 'in_channels', 3)}, {size}, {size}] -> logits [batch, {model.num_classes}]")
    if not args.no_verify:
        try:
            diff = verify_onnx(model, file, args.input)
        except ValueError as e:  # onnxruntime missing: the file is written, say how to check it
            print(f"not verified: {e}")
            return 0
        print(f"onnxruntime vs PyTorch: max abs difference {diff:.2e}")
    return 0
