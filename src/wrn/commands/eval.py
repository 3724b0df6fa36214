"""`wrn eval`: accuracy of a checkpoint on a dataset split (rebuilds the model from the checkpoint)."""

from __future__ import annotations

import argparse
import json


HELP = "evaluate a checkpoint: wrn eval RUN_DIR|CHECKPOINT --data PATH|NAME [--split test|val]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory or its checkpoint/ directory")
    parser.add_argument("--data", metavar="PATH|NAME", help="dataset name or local copy (default: the run's own)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: the run's own")
    parser.add_argument("--batch-size", type=int, help="default: the run's train.eval_batch_size")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def evaluate_checkpoint(checkpoint: str, *, data: str | None = None, split: str = "test", device: str = "auto",
                        precision: str | None = None, batch_size: int | None = None) -> dict:
    """Rebuild the model from the checkpoint and evaluate it the way training did (same
    normalisation statistics, split, precision and batch size)."""
    from wrn.train.config import data_overrides
    from wrn.errors import UserError
    from wrn.train import accel
    from wrn.train.checkpoint import find_checkpoint, load_checkpoint
    from wrn.train.config import config_from_dict, set_value
    from wrn.train.engine import Run, build_data, evaluate

    ckpt = find_checkpoint(checkpoint)
    model, state = load_checkpoint(ckpt)
    cfg = config_from_dict(state["config"])
    for text in data_overrides(data):
        key, _, value = text.partition("=")
        set_value(cfg, key, value)
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be >= 1")
        cfg.train.eval_batch_size = batch_size
    dev = accel.resolve_device(device)
    cfg.accel.precision = precision or cfg.accel.precision
    norm = state.get("normalize")
    stats = (norm["mean"], norm["std"]) if norm else None
    data = build_data(cfg, dev, splits=(split,), stats=stats)
    if split not in data.loaders:
        raise UserError(f"--split {split}: the run has no {split} images (data.val_size=0): use --split test")
    model = accel.prepare_model(model, dev, cfg.accel.channels_last)
    run = Run(cfg=cfg, out_dir=ckpt, device=dev, model=model, optimizer=None, train_step=None,
              eval_step=accel.make_eval_step(model, precision=cfg.accel.precision, device=dev), schedule=None,
              augment=data.augment, loaders=data.loaders, log=None)
    loss, acc = evaluate(run, split)
    model.eval()
    loader = data.loaders[split]
    images = getattr(loader, "num_samples", None) or len(getattr(loader, "dataset", []))
    return {"checkpoint": str(ckpt), "split": split, "images": images, "accuracy": acc, "loss": loss,
            "step": state.get("step"), "model": state["model_args"]["name"], "precision": cfg.accel.precision,
            "device": str(dev)}


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, device=args.device,
                                 precision=args.precision, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} {result['split']} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['images']} images, loss {result['loss']:.4f})")
    return 0
