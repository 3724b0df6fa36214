"""`wrn info MODEL`: the architecture in the paper's terms, parameter count and forward FLOPs."""

from __future__ import annotations

import argparse
import json

from wrn.errors import UserError

HELP = "show a model's architecture (groups, blocks, widths), parameters and FLOPs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="e.g. wrn-28-10, resnet-110, wide_resnet50_2")
    parser.add_argument("--input", type=int, default=None, metavar="SIZE",
                        help="input image size for output sizes and FLOPs (default: 32, 224 for ImageNet nets)")
    parser.add_argument("--block", default=None, metavar="K,K,...",
                        help="block type as kernel sizes, e.g. 3,1,3 for B(3,1,3)")
    parser.add_argument("--dropout", type=float, default=None, help="dropout between the convs of a block")
    parser.add_argument("--blocks-per-group", type=int, default=None, metavar="N",
                        help="override N = (depth - 4) / 6, as the deepening-factor table does")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N", help="classifier outputs")
    parser.add_argument("--json", action="store_true", help="print the same as one JSON object")
    parser.add_argument("--list", action="store_true", help="list the registered model names")


def parse_block(text: str) -> list[int]:
    try:
        return [int(k) for k in text.replace("(", "").replace(")", "").split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--block {text!r} is not a list of kernel sizes: use e.g. --block 3,1,3") from None


def model_kwargs(args: argparse.Namespace) -> dict:
    kwargs: dict = {}
    if args.block is not None:
        kwargs["block"] = parse_block(args.block)
    for key in ("dropout", "blocks_per_group", "num_classes"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def _conv_layers(model) -> tuple[int, int]:
    """(conv layers counted as the paper's depth does, of which 1x1 shortcut projections)."""
    import torch.nn as nn

    from wrn.models.layers import SqueezeExcite

    se_convs = {id(m) for se in model.modules() if isinstance(se, SqueezeExcite) for m in se.modules()}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in se_convs]
    return len(names), sum(1 for n in names if "shortcut" in n or "downsample" in n)


def architecture(name: str, kwargs: dict, input_size: int | None = None) -> dict:
    """Everything `wrn info` prints, as a JSON-ready dict."""
    import torch

    from wrn.models import create_model
    from wrn.models.flops import forward_flops, meta_forward

    with torch.device("meta"):  # shapes only: no weights are initialised or stored
        model = create_model(name, **kwargs)
    size = getattr(model, "default_input_size", 32) if input_size is None else input_size
    if size < 1:
        raise UserError(f"--input {size} must be a positive image size: e.g. 32 or 224")
    desc = model.describe() if hasattr(model, "describe") else {"family": type(model).__name__, "groups": []}
    outputs: dict[str, list[int]] = {}
    meta_forward(model, size, lambda n, m, out: outputs.__setitem__(n, list(out.shape[2:])) if out.ndim == 4 else None)
    groups = [{**g, "output": outputs.get(g["name"])} for g in desc.pop("groups")]
    head = desc.pop("head", None) or ("BN, ReLU, global average pool, linear" if hasattr(model, "bn")
                                      else "global average pool, linear")
    groups.append({"name": "head", "layers": head,
                   "output": [1, 1], "width": model.num_classes})
    convs, projections = _conv_layers(model)
    flops = forward_flops(model, size)
    return {"model": name, "model_args": kwargs, **desc, "num_classes": model.num_classes, "input_size": size,
            "groups": groups, "conv_layers": convs, "shortcut_projections": projections,
            "params": sum(p.numel() for p in model.parameters()), "forward_flops": flops,
            "forward_gflops": round(flops / 1e9, 3)}


def _format(info: dict) -> str:
    lines = [f"{info['model']}: {info['family']}"]
    facts = [f"block {info['block']}"]
    if "deepening_l" in info:
        facts.append(f"deepening l = {info['deepening_l']}")
    facts.append(f"blocks per group N = {info['blocks_per_group']}")
    if "width_k" in info:
        facts.append(f"width k = {info['width_k']}")
    if info.get("dropout"):
        facts.append(f"dropout {info['dropout']}")
    lines.append("  " + ", ".join(facts))
    lines.append(f"  {'group':<7} {'output':<9} {'width':>6}  layers")
    for g in info["groups"]:
        out = "x".join(str(s) for s in g["output"]) if g["output"] else "?"
        lines.append(f"  {g['name']:<7} {out:<9} {g['width']:>6}  {g['layers']}")
    lines.append(f"  conv layers: {info['conv_layers']} (incl. {info['shortcut_projections']} 1x1 shortcut projections)"
                 " + 1 linear")
    lines.append(f"  params: {info['params']:,} ({info['params'] / 1e6:.2f}M), {info['num_classes']} classes")
    lines.append(f"  forward FLOPs at {info['input_size']}x{info['input_size']}: {info['forward_gflops']:.3f} G per "
                 "image (2 x MACs of conv + linear; a training step costs ~3x)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from wrn.models import list_models

    if args.list:
        names = list_models()
        if args.json:
            print(json.dumps(names))
        else:
            print("\n".join(names))
            print("(any wrn-DEPTH-WIDTH with DEPTH = 6N+4, resnet-DEPTH with 6n+2, preact-resnet-DEPTH also works)")
        return 0
    if not args.model:
        raise UserError("no MODEL given: e.g. `wrn info wrn-28-10`, or `wrn info --list` for the names")
    info = architecture(args.model, model_kwargs(args), args.input)
    print(json.dumps(info, indent=2) if args.json else _format(info))
    return 0
