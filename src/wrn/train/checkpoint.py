"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

    RUN/checkpoint/model.safetensors       the model's state_dict (the raw, trained weights)
    RUN/checkpoint/ema.safetensors         with train.ema: the moving average's state_dict (same keys)
    RUN/checkpoint/optimizer.safetensors   optimizer tensors (momentum buffers), keyed state.<i>.<name>
    RUN/checkpoint/optimizer.json          the rest of the optimizer state (param groups)
    RUN/checkpoint/state.json              epoch, step, config, model_args, RNG, metrics, ema_updates,
                                           and the size and sha256 of each file above

A checkpoint is written into a fresh directory (each file fsynced, state.json last), then swapped
in by two renames: ``checkpoint`` -> ``.checkpoint.old``, new -> ``checkpoint``. A kill at any
moment leaves at least one complete checkpoint, and ``find_checkpoint`` takes the newest complete
one. Complete means every file has its recorded size (a cut-short or missing file) and its
recorded sha256 (a same-size bit flip); checkpoints of format 1 have no sha256 and are checked by
size only. state.json carries ``model_args``, so ``load_checkpoint`` rebuilds the model without a
config.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save_file as st_save_file

from wrn.errors import UserError
from wrn.fsio import file_digest, fsync_dir, fsync_path, write_synced
from wrn.models import create_model
from wrn.rundir import CHECKPOINT, KEPT, OLD  # noqa: F401 - the directory names, this module's API too

FORMAT = 2  # 2: state.json records each file's sha256 (1: sizes only)
MODEL_FILE, EMA_FILE = "model.safetensors", "ema.safetensors"
WEIGHTS = ("ema", "raw")  # which weights a reader takes: the moving average's or the trained ones


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write, fsync and delete a probe file there: a read-only, full or
    over-quota output directory is a one-line UserError before any work, not after hours."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_synced(probe, b"\0" * 65536)
    except OSError as e:
        raise UserError(f"cannot write to the output directory {run_dir} ({e.strerror or e}): "
                        "choose another --out, or free disk space") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _test_pause() -> None:
    # Fault-test hook, inert unless WRN_TEST_CHECKPOINT_PAUSE=<seconds> is set: sleeps inside a
    # checkpoint write (after model.safetensors, and between the two renames) so that
    # tests/test_faults.py can SIGKILL a run exactly there. Never set it for real runs.
    seconds = os.environ.get("WRN_TEST_CHECKPOINT_PAUSE")
    if seconds:
        time.sleep(float(seconds))


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def rng_state() -> dict[str, Any]:
    b64 = lambda t: base64.b64encode(t.cpu().numpy().tobytes()).decode()  # noqa: E731
    state = {"torch": b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def tensor(s):
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    if "torch" in state:
        torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        states = [tensor(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        rest[str(idx)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                rest[str(idx)][name] = value
    return _cpu(tensors), {"state": rest, "param_groups": sd["param_groups"]}


def save_checkpoint(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], averaged: nn.Module | None = None) -> Path:
    """Write a complete checkpoint for ``run_dir`` and swap it in atomically; returns its path.
    ``averaged``: the moving average's network (train.ema), written to ema.safetensors."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".checkpoint.tmp-{os.getpid()}"
    try:
        for stale in run_dir.glob(".checkpoint.tmp-*"):  # ours, or a killed writer's (one writer per run)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        files: dict[str, int] = {}
        digests: dict[str, str] = {}

        def put(name: str, data: bytes) -> None:
            files[name] = write_synced(tmp / name, data)
            digests[name] = hashlib.sha256(data).hexdigest()  # of the bytes in memory: no re-read

        def put_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
            # Straight to the file: safetensors' in-memory save() holds every tensor twice more
            # (a 1.07 GB WRN-70-16 peaked at 3.3x its weights on import); hashed from the page cache.
            try:
                st_save_file(tensors, tmp / name)
            except SafetensorError as e:  # its I/O errors (disk full) as the OSError they are
                code = int(m.group(1)) if (m := re.search(r"os error (\d+)", str(e))) else errno.EIO
                raise OSError(code, os.strerror(code), str(tmp / name)) from None
            fsync_path(tmp / name)
            files[name], digests[name] = (tmp / name).stat().st_size, file_digest(tmp / name, "sha256")

        put_tensors("model.safetensors", _cpu(unwrap(model).state_dict()))
        _test_pause()
        if averaged is not None:
            put_tensors(EMA_FILE, _cpu(averaged.state_dict()))
        if optimizer is not None:
            tensors, rest = _optimizer_parts(optimizer)
            put_tensors("optimizer.safetensors", tensors)
            put("optimizer.json", json.dumps(rest).encode())
        state = {"format": FORMAT, **state, "rng": rng_state(), "files": files, "sha256": digests}
        write_synced(tmp / "state.json", (json.dumps(state, indent=1) + "\n").encode())  # last: marks it complete
        fsync_dir(tmp)
    except OSError as e:  # disk full, quota, read-only: the previous checkpoint is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {run_dir / CHECKPOINT} is kept" if (run_dir / CHECKPOINT).exists() \
            else "no earlier checkpoint exists"
        raise UserError(f"cannot write a checkpoint in {run_dir} ({e.strerror or e}): {kept}; free disk space "
                        f"and continue with --resume {run_dir}") from None

    final, old = run_dir / CHECKPOINT, run_dir / OLD
    if final.exists():
        if old.exists():  # a stale one from a kill after the last swap
            shutil.rmtree(old)
        os.rename(final, old)
    _test_pause()
    os.rename(tmp, final)
    fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def keep_copy(run_dir: Path, epoch: int) -> Path:
    """Hard-link (or copy) the current checkpoint to RUN/checkpoints/epoch-NNNN (train.keep_every)."""
    src = Path(run_dir) / CHECKPOINT
    dst = Path(run_dir) / KEPT / f"epoch-{epoch:04d}"
    tmp = dst.with_name(dst.name + ".tmp")
    for d in (tmp, dst):
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    os.rename(tmp, dst)
    return dst


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def check(ckpt_dir: Path, *, verify: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """``(state.json, None)`` for a complete checkpoint directory, else ``(None, why)`` where why
    names the damaged file. ``verify=False`` checks the sizes only (cheap: no file is read)."""
    ckpt_dir = Path(ckpt_dir)
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except FileNotFoundError:
        return None, f"{ckpt_dir / 'state.json'} is missing"
    except (OSError, ValueError):
        return None, f"{ckpt_dir / 'state.json'} is unreadable or cut short"
    files = state.get("files") if isinstance(state, dict) else None
    digests = state.get("sha256", {}) if isinstance(state, dict) else None  # absent in format 1
    if not isinstance(files, dict) or not isinstance(digests, dict) or not set(digests) <= set(files):
        return None, f"{ckpt_dir / 'state.json'} is unreadable or cut short"
    for name, size in files.items():
        try:
            found = (ckpt_dir / name).stat().st_size
        except OSError:
            return None, f"{ckpt_dir / name} is missing"
        if found != size:
            return None, f"{ckpt_dir / name} is truncated or altered ({found} bytes, {size} written)"
    for name, digest in digests.items() if verify else ():
        try:
            if _sha256(ckpt_dir / name) != digest:
                return None, (f"{ckpt_dir / name} is damaged (same size, but its sha256 differs from the one "
                              "recorded when it was written)")
        except OSError as e:
            return None, f"{ckpt_dir / name} is unreadable ({e.strerror or e})"
    return state, None


def read_state(ckpt_dir: Path, *, verify: bool = True) -> dict[str, Any] | None:
    """state.json of a complete checkpoint directory (sizes and checksums hold), else None."""
    return check(ckpt_dir, verify=verify)[0]


def damage(ckpt_dir: Path) -> str:
    """Why ``ckpt_dir`` is not a complete checkpoint, naming the file (for warnings and errors)."""
    return check(ckpt_dir)[1] or f"{ckpt_dir} is incomplete"


def saved_any(run_dir: Path) -> bool:
    """A checkpoint was saved in ``run_dir``: the current one, the previous one left by a kill between
    the swap's two renames, or a kept epoch (a resume continues from one; without any it starts over)."""
    return any((run_dir / name).exists() for name in (CHECKPOINT, OLD, KEPT))


def find_checkpoint(path: str | Path) -> Path:
    """The newest complete checkpoint under ``path`` (a run dir or a checkpoint dir).

    When the newest one is damaged (a file truncated, missing or with another checksum), the
    newest complete one among ``checkpoint/``, ``.checkpoint.old/`` and the kept
    ``checkpoints/epoch-NNNN/`` is used instead, with a warning on stderr that names the damaged file.
    """
    return _find(path)[0]


def _find(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist: give a run directory or its checkpoint/")
    if not path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a file: give a run directory or its checkpoint/ "
                        f"(wrn never loads pickled .pt/.pth checkpoints)")
    checked: dict[Path, str | None] = {}  # candidate -> why it is damaged
    if (path / "state.json").exists() or path.name in (CHECKPOINT, OLD) or path.parent.name == KEPT:
        state, checked[path] = check(path)
        if state is not None:
            return path, state
        newest = path
        run_dir = path.parent.parent if path.parent.name == KEPT else path.parent if path.name in (CHECKPOINT, OLD) else None
    else:
        newest, run_dir = path / CHECKPOINT, path
    candidates = []
    if run_dir is not None:
        kept = sorted((run_dir / KEPT).glob("epoch-[0-9]*"), reverse=True) if (run_dir / KEPT).is_dir() else []
        candidates = [run_dir / CHECKPOINT, run_dir / OLD, *kept]
    # Sizes of every candidate first (no file read), then checksums newest first: a resume hashes
    # only the checkpoints it has to, not every kept epoch.
    sized = [(state["step"] if isinstance(state.get("step"), int) else -1, i, c)
             for i, c in enumerate(candidates)
             if not c.name.endswith(".tmp") and c not in checked and (state := read_state(c, verify=False)) is not None]
    for _, _, c in sorted(sized, key=lambda t: (-t[0], t[1])):
        state, checked[c] = check(c)
        if state is None:
            continue
        if c != newest:
            skipped = [why for why in checked.values() if why]
            if newest not in checked:
                skipped.insert(0, damage(newest) if newest.exists() else f"{newest} is missing")
            print(f"wrn: warning: {'; '.join(skipped)}; using the last complete checkpoint {c}", file=sys.stderr)
        return c, state
    # Every checkpoint there is damaged (the current one, or the previous one a kill between the
    # swap's renames left alone): name each, so that nobody mistakes the run for one never saved.
    damaged = [c for c in dict.fromkeys([newest, *candidates]) if c.exists() and not c.name.endswith(".tmp")]
    if damaged:
        why = "; ".join(checked.get(c) or damage(c) for c in damaged)
        kept = "" if any(c.parent.name == KEPT for c in damaged) else \
            " and no earlier checkpoint is kept (train.keep_every keeps some)"
        raise UserError(f"no complete checkpoint in {str(path)!r}: {why}{kept}: start the run again in a new --out")
    raise UserError(f"no complete checkpoint in {str(path)!r}: the run wrote none yet (start it again without --resume)")


def _check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        name = (missing or extra)[0]
        problem = "is missing from the checkpoint" if missing else "is not in the model"
        raise UserError(f"{what}: tensor {name!r} {problem}: the checkpoint belongs to a different model")
    for k, v in expected.items():
        if tuple(found[k].shape) != tuple(v.shape) or found[k].dtype != v.dtype:
            raise UserError(f"{what}: tensor {k!r} is {found[k].dtype} {list(found[k].shape)} in the checkpoint "
                            f"but {v.dtype} {list(v.shape)} in the model: the checkpoint belongs to a different model")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}): the checkpoint is damaged") from None


def load_weights(model: nn.Module, ckpt_dir: Path, file: str = MODEL_FILE) -> None:
    target = unwrap(model)
    tensors = _read_tensors(Path(ckpt_dir) / file)
    _check_shapes(target.state_dict(), tensors, str(Path(ckpt_dir) / file))
    target.load_state_dict(tensors)


def weights_file(ckpt_dir: Path, state: dict[str, Any], weights: str | None = None,
                 raw_hint: str = "--weights raw") -> tuple[str, str]:
    """(file, "ema" | "raw"): the weights a reader takes; ``weights`` None: the average if kept.
    ``raw_hint``: how the reader's user asks for the raw weights (said when there is no average)."""
    has_ema = EMA_FILE in (state.get("files") or {})
    if weights is None:
        weights = "ema" if has_ema else "raw"
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r}: use ema (the moving average, train.ema) or raw (the trained weights)")
    if weights == "ema" and not has_ema:
        raise UserError(f"{ckpt_dir}: the run kept no moving average of its weights (train.ema=0): use the raw "
                        f"weights ({raw_hint})")
    return (EMA_FILE if weights == "ema" else MODEL_FILE), weights


def start_weights(ckpt_dir: Path, state: dict[str, Any],
                  weights: str | None = None) -> tuple[str, dict[str, torch.Tensor], str]:
    """(file name, tensors, sha256) of the weights a new run starts from (``wrn train --init``):
    ``weights`` (train.init_weights: ema | raw), unset the moving average where the run kept one
    (``weights_file``), else its trained weights, from the complete checkpoint ``ckpt_dir``
    (``state``: its state.json)."""
    ckpt_dir = Path(ckpt_dir)
    name, _ = weights_file(ckpt_dir, state, weights, raw_hint="train.init_weights=raw")
    if name not in state.get("files", {}):
        raise UserError(f"{ckpt_dir} holds no weights ({name}): give a run's directory")
    digest = state.get("sha256", {}).get(name) or _sha256(ckpt_dir / name)  # format 1 records sizes only
    return name, _read_tensors(ckpt_dir / name), digest


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt_dir: Path) -> None:
    tensors = _read_tensors(Path(ckpt_dir) / "optimizer.safetensors")
    rest = json.loads((Path(ckpt_dir) / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def restore(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
            averaged: nn.Module | None = None) -> dict[str, Any]:
    """Load weights, optimizer state and RNG state for a resume (and the moving average's
    network into ``averaged``); returns state.json."""
    state, why = check(ckpt_dir)
    if state is None:
        raise UserError(f"cannot resume from {ckpt_dir}: {why}: resume from another checkpoint")
    load_weights(model, ckpt_dir)
    if averaged is not None:
        if EMA_FILE not in state["files"]:
            raise UserError(f"cannot resume from {ckpt_dir}: it holds no {EMA_FILE} but the run averages its "
                            "weights (train.ema): resume with the run's own config.yaml")
        load_weights(averaged, ckpt_dir, EMA_FILE)
    if optimizer is not None and "optimizer.safetensors" in state["files"]:
        load_optimizer(optimizer, ckpt_dir)
    set_rng_state(state.get("rng", {}))
    return state


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    weights: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``wrn.load_checkpoint(run_dir_or_checkpoint) -> (model, state)``: the model rebuilt from the
    saved constructor arguments, weights loaded, in eval mode; state is the checkpoint's state.json,
    ``state["weights"]`` saying which weights: ``weights`` ``"ema"`` (the moving average, train.ema),
    ``"raw"`` (the trained ones) or None (the average when the run has one)."""
    ckpt, state = _find(path)
    args = dict(state.get("model_args") or {})
    name = args.pop("name", None)
    if not name:
        raise UserError(f"{ckpt / 'state.json'} has no model_args: it was not written by wrn train")
    if isinstance(args.get("block"), list):
        args["block"] = tuple(args["block"])
    try:
        model = create_model(name, **args)
    except (TypeError, ValueError) as e:  # state.json edited or from another version
        raise UserError(f"{ckpt / 'state.json'}: its model_args {state.get('model_args')} do not build a model "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    file, state["weights"] = weights_file(ckpt, state, weights)
    load_weights(model, ckpt, file)
    return model.to(device).eval(), state
