"""``wrn import`` / ``wrn.import_checkpoint``: another codebase's checkpoint -> a run directory.

    wrn.import_checkpoint("Rebuffi2021Fixing_70_16_cutmix_extra.pt", "runs/rebuffi", layout="dm",
                          overrides=["model.activation=silu"])

The source is read without running anything (``torch.load(weights_only=True)``, or safetensors),
its state dict found inside the usual wrappings, its keys mapped to ours (``models/layouts.py``)
and loaded strictly into a model built on the meta device (``assign=True``: the loaded tensors
become the parameters; nothing is allocated twice). DIR is then written by the checkpoint
module's own writer, so every command takes it: ``wrn eval``, ``predict``, ``export``, ``runs``.

The input convention is part of the run: ``state.json``'s ``normalize`` (mean/std on the [0, 1]
scale, applied by eval and predict before the model; 0/1 for a model that normalises inside),
``input_size`` and the config's data section. DIR also holds ``imported.json`` (source, sha256,
layout, what was chosen and why): it marks the run as imported, which ``wrn runs`` shows and
``wrn train --resume`` refuses (there is no optimizer state to resume; ``--init`` fine-tunes).
Every check runs before anything is written, and DIR appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from wrn.data.catalog import DATASETS
from wrn.errors import UserError
from wrn.fsio import fsync_dir, write_synced
from wrn.models import create_model, layouts
from wrn.models.variants import ROBUSTBENCH_CIFAR10_MEAN, ROBUSTBENCH_CIFAR10_STD, normalizes_inside
from wrn.rundir import CONFIG, IMPORTED, LOG, log_line
from wrn.train import checkpoint
from wrn.train.config import IMPORT_KEYS, Config, apply_overrides, validate

TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt")
_IMAGENET = (DATASETS["imagenet"].mean, DATASETS["imagenet"].std)
_CIFAR100_SSL = (tuple(x / 255 for x in (129.3, 124.1, 112.4)), tuple(x / 255 for x in (68.2, 65.4, 70.4)))
# Where each codebase's CIFAR pipeline normalises (its data code, not its checkpoints, holds these).
SSL_CONSTANTS = {
    ("usb", 10): _IMAGENET, ("usb-early", 10): _IMAGENET,  # USB normalises CIFAR-10 with ImageNet's
    ("usb", 100): _CIFAR100_SSL, ("usb-early", 100): _CIFAR100_SSL, ("torchssl", 100): _CIFAR100_SSL,
    ("torchssl", 10): (tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7))),
}
DM_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # RobustBench's CIFAR-100 constants


def read_source(src: str | os.PathLike) -> Any:
    """The loaded object of a .pt/.pth/.tar/.bin/.ckpt (weights only: nothing in it runs) or .safetensors."""
    path = Path(src)
    if not path.is_file():
        raise UserError(f"{src}: no such file: give a .pt, .pth, .tar or .safetensors checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{src} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise UserError(f"{src}: unknown checkpoint type {path.suffix or '(no suffix)'!r}: "
                        f"give a {', '.join(TORCH_SUFFIXES)} or .safetensors file")
    # mmap: the tensors stay in the file's pages until used (a 1 GB WRN-70-16 is not read twice).
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a pickled object that only its own code could rebuild: refused before anything ran
            raise UserError(f"{src} needs more than tensors to load (it pickles {found[1]}; nothing of it was run): "
                            "re-save its state dict with torch.save(model.state_dict(), ...) or as .safetensors") from None
        why = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
        raise UserError(f"{src} is not a checkpoint ({why[1] if why else text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise UserError(f"{src} is not a checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def class_names(spec: str | Sequence[str] | None, count: int) -> tuple[list[str], str | None]:
    """(names, note) for ``--classes cifar10|cifar100|a,b,c``; by default CIFAR's names where the
    count is 10 or 100 (said in the note), else the indices."""
    if spec is None:
        guess = {10: "cifar10", 100: "cifar100"}.get(count)
        if guess is None:
            return [str(i) for i in range(count)], None
        return list(DATASETS[guess].classes), f"class names: {guess}'s (--classes sets others)"
    names = list(DATASETS[spec].classes) if isinstance(spec, str) and spec in ("cifar10", "cifar100") else \
        [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    if len(names) != count or not all(names):
        raise UserError(f"--classes gives {len(names)} classes but the classifier has {count} outputs: "
                        f"give {count} names (or cifar10 / cifar100)")
    return names, None


def _mismatch(layout: str, detected: str | None, missing: list[str], unexpected: list[str]) -> UserError:
    parts = []
    if missing:
        parts.append(f"missing {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        parts.append(f"unexpected {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    looks = ("the keys look like no known layout" if detected is None else
             f"the keys look like --layout {detected}" if not layouts.same_layout(layout, detected) else
             f"the keys are {layout}'s but not this model's (drop model.name to infer it?)")
    return UserError(f"the checkpoint does not fit --layout {layout}: {looks}; {', '.join(parts)}")


def _check_layout(layout: str, detected: str | None) -> None:
    if layout == "ssl" and detected == "ssl-torchssl":
        raise UserError("these are TorchSSL's or early USB's keys (fc, a bias on every conv), which compute "
                        "differently from USB's current WRN: give --layout ssl-torchssl (TorchSSL) or "
                        "--layout ssl-usb-early (USB before Nov 2022: activated input in every transition block)")


def _convention(name: str, model_args: dict, cfg) -> tuple[dict, str]:
    """(normalize {mean, std} applied before the model, a sentence saying what the inputs are)."""
    if normalizes_inside(name):
        if cfg.data.mean is not None or cfg.data.normalize not in ("none",):
            raise UserError(f"{name} normalises its inputs inside the model (mean/std are its constructor "
                            "arguments): drop data.mean/data.std/data.normalize")
        return {"mean": [0.0] * 3, "std": [1.0] * 3}, \
            f"[0, 1] pixels; the model normalises inside with mean {list(model_args['mean'])}, std {list(model_args['std'])}"
    if cfg.data.mean is not None:
        mean, std = cfg.data.mean, cfg.data.std
    elif cfg.data.normalize == "none":
        mean, std = (0.0,) * 3, (1.0,) * 3
    else:
        info = DATASETS.get(cfg.data.name)
        if info is None or info.mean is None:
            raise UserError(f"no published mean/std for data.name={cfg.data.name}: give data.mean and data.std")
        mean, std = info.mean, info.std
    what = "[0, 1] pixels, no normalisation" if tuple(std) == (1.0,) * 3 and not any(mean) else \
        f"[0, 1] pixels normalised with mean {[round(m, 4) for m in mean]}, std {[round(s, 4) for s in std]}"
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}, what


def _default_data(layout: str, codebase: str | None, num_classes: int, overridden: set[str]) -> list[str]:
    """The overrides that state a layout's own input convention, unless the user stated it."""
    name = "imagenet" if layout == "torchvision" else {100: "cifar100"}.get(num_classes, "cifar10")
    out = [f"data.name={name}"] if "data.name" not in overridden else []
    if overridden & {"data.normalize", "data.mean", "data.std"}:
        return out
    if layout in ("dm", "xternalz"):  # RobustBench feeds [0, 1] pixels
        return out + ["data.normalize=none"]
    if codebase is not None:
        mean, std = SSL_CONSTANTS.get((codebase, num_classes), _IMAGENET)
        return out + ["data.mean=" + ",".join(map(repr, mean)), "data.std=" + ",".join(map(repr, std))]
    return out + ["data.normalize=paper"]  # wrn / torchvision: the published constants of data.name


def _model_spec(layout: str, ours: dict, cfg, given: set[str], model_kwargs: dict,
                notes: list[str]) -> tuple[str, dict[str, Any]]:
    """(model name, constructor keywords): model.name or the shapes' inference, then the overrides."""
    if "model.name" in given:
        name, kwargs = cfg.model.name, {"num_classes": int(ours["fc.weight"].shape[0])}
        if layout in layouts.SSL_CODEBASE:
            kwargs["codebase"] = layouts.SSL_CODEBASE[layout]
    else:
        name, kwargs = layouts.infer(layout, ours)
        notes.append(f"inferred {name} with {kwargs['num_classes']} classes from the tensor shapes "
                     "(model.name=... says otherwise)")
    if "model.num_classes" in given:
        kwargs["num_classes"] = cfg.model.num_classes
    if cfg.model.activation is not None:
        kwargs["activation"] = cfg.model.activation
    if normalizes_inside(name) and not {"mean", "std"} & set(model_kwargs):
        c100 = kwargs.get("num_classes") == 100
        mean, std = DM_CIFAR100 if c100 else (ROBUSTBENCH_CIFAR10_MEAN, ROBUSTBENCH_CIFAR10_STD)
        kwargs.update(mean=list(mean), std=list(std))
        notes.append(f"model normalises with RobustBench's {'CIFAR-100' if c100 else 'CIFAR-10'} constants "
                     "(its files do not store them)")
    return name, {**kwargs, **model_kwargs}


def _load_strict(layout: str, detected: str | None, name: str, kwargs: dict, ours: dict) -> torch.nn.Module:
    """The model built on the meta device with ``ours`` as its weights (``assign``: no copy), every
    key and shape checked first."""
    try:
        with torch.device("meta"):  # shapes only: the checkpoint's tensors become the weights
            model = create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {name} with {kwargs}: {str(e).splitlines()[0]}") from None
    expected = model.state_dict()
    for key, want in expected.items():  # timm-style files omit BN's step counter
        if key.endswith("num_batches_tracked") and key not in ours:
            ours[key] = torch.zeros((), dtype=want.dtype)
    if set(expected) != set(ours):
        raise _mismatch(layout, detected, [layouts.foreign_name(layout, k) for k in expected if k not in ours],
                        [layouts.foreign_name(layout, k) for k in ours if k not in expected])
    for key, want in expected.items():
        got = ours[key]
        if tuple(got.shape) != tuple(want.shape):
            hint = ("the classifier's class count differs: drop model.num_classes or --classes" if key.startswith("fc.")
                    else "the file is for another depth or width: drop model.name to infer it")
            raise UserError(f"tensor {key!r} is {list(got.shape)} in the checkpoint but {name} has "
                            f"{list(want.shape)}: {hint}")
        if got.dtype != want.dtype:  # fp16/bf16 files: evaluated in fp32 like every imported run
            ours[key] = got.to(want.dtype)
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike, *, layout: str,
                      overrides: Sequence[str] = (), classes: str | Sequence[str] | None = None,
                      state_key: str | None = None, model_kwargs: dict | None = None,
                      log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Import ``src`` (laid out as ``layout``) into the new run directory ``out``; returns what was
    recorded in ``imported.json``. ``overrides``: config ``key=value`` (``IMPORT_KEYS``);
    ``model_kwargs``: more constructor arguments (e.g. dm-wrn's ``mean``/``std``)."""
    say = log or (lambda _: None)
    out = Path(out)
    if out.exists():
        raise UserError(f"--out {out} already exists: choose a new directory (an import never overwrites)")
    if layout not in layouts.LAYOUTS:
        raise UserError(f"--layout {layout!r} is not one of {', '.join(layouts.LAYOUTS)}")
    cfg = Config()
    given = set(apply_overrides(cfg, overrides, IMPORT_KEYS, refuse=lambda key, _: (
        f"{key} does not apply to an import: use {', '.join(IMPORT_KEYS)}")))

    start = time.perf_counter()
    state, notes = layouts.unwrap(read_source(src), state_key)
    detected = layouts.detect(list(state))
    _check_layout(layout, detected)
    ours, map_notes, unmapped = layouts.to_ours(layout, state)
    notes += map_notes

    missing = [k for k in layouts.SIGNATURES[layout] if k not in state]
    if unmapped or missing or (detected is not None and not layouts.same_layout(layout, detected)):
        raise _mismatch(layout, detected, missing, unmapped)
    name, kwargs = _model_spec(layout, ours, cfg, given, model_kwargs or {}, notes)
    num_classes = kwargs.get("num_classes", 10)
    model = _load_strict(layout, detected, name, kwargs, ours)

    names, class_note = class_names(classes, num_classes)
    if class_note:
        notes.append(class_note)
    codebase = kwargs.get("codebase")
    apply_overrides(cfg, _default_data(layout, codebase, num_classes, given))
    cfg.model.name, cfg.model.num_classes, cfg.model.dropout = name, num_classes, 0.0
    if layout == "torchvision":
        cfg.data.streaming = True
    validate(cfg)
    normalize, convention = _convention(name, model.model_args, cfg)
    size = 224 if layout == "torchvision" else getattr(model, "default_input_size", 32)
    digest = _sha256(Path(src))
    record = {"source": str(src), "sha256": digest, "layout": layout, "detected_layout": detected,
              "state_key": state_key, "model": name, "model_args": model.model_args, "input": convention,
              "notes": notes, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_run(out, cfg, model, {"epoch": 0, "step": 0, "config": cfg.to_dict(), "model_args": model.model_args,
                                 "normalize": normalize, "classes": names, "input_size": [size, size],
                                 "imported": record}, record)
    for note in notes:
        say(f"wrn import: {note}")
    params = sum(p.numel() for p in model.parameters())
    say(f"imported {src} -> {out}: {name}, {params / 1e6:.2f}M params, {num_classes} classes, inputs: {convention} "
        f"({time.perf_counter() - start:.1f}s)")
    return record


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_run(out: Path, cfg, model, state: dict, record: dict) -> None:
    """DIR whole or not at all: written in a hidden sibling, then renamed into place."""
    parent = out.parent if str(out.parent) else Path(".")
    created = next((p for p in reversed([parent, *parent.parents]) if not p.exists()), None)
    try:
        parent.mkdir(parents=True, exist_ok=True)  # as wrn train --out does (every check has passed)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create {parent} ({e.strerror or e})") from None
    tmp = parent / f".{out.name}.import-{os.getpid()}"
    try:
        tmp.mkdir()
        write_synced(tmp / CONFIG, cfg.to_yaml().encode())
        write_synced(tmp / IMPORTED, (json.dumps(record, indent=1) + "\n").encode())
        write_synced(tmp / LOG, log_line({"kind": "import", **{k: record[k] for k in ("source", "layout", "model",
                                                                                     "time")}}).encode())
        checkpoint.save_checkpoint(tmp, model=model, optimizer=None, state=state)
        fsync_dir(tmp)
        os.rename(tmp, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(created if created is not None else tmp, ignore_errors=True)  # nor the parents made for it
        raise
