"""`wrn import SRC --layout L --out DIR`: another codebase's checkpoint -> a run directory."""

from __future__ import annotations

import argparse

HELP = ("import another codebase's checkpoint as a run directory: wrn import SRC --layout "
        "wrn|xternalz|dm|ssl|ssl-torchssl|ssl-usb-early|torchvision --out DIR [--classes ...] [key=value ...]")


# models.layouts.LAYOUTS, spelled out: `wrn --help` imports no torch (a test keeps the two equal).
LAYOUTS = ("wrn", "xternalz", "dm", "ssl", "ssl-torchssl", "ssl-usb-early", "torchvision")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a .pt/.pth/.tar (read with weights_only) or .safetensors file")
    parser.add_argument("--layout", required=True, choices=LAYOUTS,
                        help="whose key layout SRC uses: xternalz (TRADES/RobustBench WideResNet), dm (DeepMind/"
                             "RobustBench DMWideResNet), ssl (USB), ssl-torchssl, ssl-usb-early (USB before Nov "
                             "2022), torchvision, wrn (ours)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run directory to create (must not exist)")
    parser.add_argument("--classes", metavar="cifar10|cifar100|a,b,c",
                        help="class names in label order (default: CIFAR's for 10 or 100 classes, else indices)")
    parser.add_argument("--state-key", metavar="KEY",
                        help="the checkpoint entry to take (default: ema_model where present, as USB evaluates, "
                             "else state_dict / model / model_state_dict)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="model.name, model.num_classes, model.activation (dm: relu|silu), data.normalize, "
                             "data.mean=R,G,B data.std=R,G,B, data.name, accel.precision")


def run(args: argparse.Namespace) -> int:
    from wrn.importer import import_checkpoint

    import_checkpoint(args.src, args.out, layout=args.layout, overrides=args.overrides, classes=args.classes,
                      state_key=args.state_key)
    return 0
