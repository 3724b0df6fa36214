"""`wrn eval`: accuracy of a checkpoint on a dataset split (rebuilds the model from the checkpoint)."""

from __future__ import annotations

import argparse
import json

HELP = ("evaluate a checkpoint: wrn eval RUN_DIR|CHECKPOINT [--data PATH|NAME] [--split test|val] [--tta|--no-tta] "
        "[key=value ...]")
# What may change between training and evaluation: how the forward pass runs, not what it computes.
EVAL_KEYS = ("accel.", "train.eval_batch_size", "data.cache_dir", "data.workers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory or its checkpoint/ directory")
    parser.add_argument("--data", metavar="PATH|NAME",
                        help="evaluate another dataset laid out with the run's classes (default: the run's own)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's prediction with its mirror's (default: as the run evaluated, "
                             "train.eval_tta)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="accel.* (e.g. accel.precision=bf16 accel.device=cpu), train.eval_batch_size")


def evaluate_checkpoint(checkpoint: str, *, data: str | None = None, split: str = "test",
                        overrides: list[str] | tuple[str, ...] = (), tta: bool | None = None) -> dict:
    """Rebuild the model from the checkpoint and evaluate it the way training did (same
    normalisation statistics and precision unless overridden). On the run's own data the split
    is the run's own (its val split is carved again from the same seed); ``data`` evaluates
    another dataset with the run's classes, where training-only settings (subset, val split) do
    not apply. ``tta`` (flip test-time augmentation) defaults to the run's train.eval_tta."""
    from wrn.errors import UserError
    from wrn.train import accel
    from wrn.train.checkpoint import find_checkpoint, load_checkpoint
    from wrn.train.config import config_from_dict, parse_override, set_value, validate
    from wrn.train.data import build_data, find_whitening, num_images, other_data
    from wrn.train.engine import evaluate

    ckpt = find_checkpoint(checkpoint)
    model, state = load_checkpoint(ckpt)
    cfg = config_from_dict(state["config"])
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith(EVAL_KEYS):
            raise UserError(f"{key} does not apply to evaluation (the checkpoint fixes it): "
                            f"use accel.* or train.eval_batch_size")
        set_value(cfg, key, value)
    if tta is not None:
        cfg.train.eval_tta = tta
    validate(cfg)
    device = accel.resolve_device(cfg.accel.device)
    norm = state.get("normalize")
    stats = (norm["mean"], norm["std"]) if norm and norm.get("mean") else None
    whitening = find_whitening(cfg, ckpt)
    if data is None:
        loader, augment = build_data(cfg, device, splits=(split,), stats=stats, whitening=whitening).pick(split)
    else:
        loader, augment = other_data(cfg, data, split, state.get("classes"), device, stats, whitening)
    model = accel.prepare_model(model, device, cfg.accel.channels_last)
    precision = accel.resolve_precision(cfg.accel.precision, device)
    eval_step = accel.make_eval_step(model, precision=precision, device=device, flip=cfg.train.eval_tta)
    loss, acc = evaluate(model, eval_step, loader, augment)
    return {"checkpoint": str(ckpt), "data": data or cfg.source(), "split": split, "images": num_images(loader),
            "accuracy": acc, "loss": loss, "step": state.get("step"), "model": state["model_args"]["name"],
            "precision": precision, "tta": cfg.train.eval_tta, "device": str(device)}


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, overrides=args.overrides,
                                 tta=args.tta)
    if args.json:
        print(json.dumps(result))
    else:
        tta = ", flip TTA" if result["tta"] else ""
        print(f"{result['model']} {result['split']} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['images']} images{tta}, loss {result['loss']:.4f})")
    return 0
