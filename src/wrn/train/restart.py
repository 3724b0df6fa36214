"""The same command resumes: ``wrn train --out DIR ...`` run again on a DIR that holds this run.

Clusters restart a job by running its command line again: ``torchrun --max-restarts`` relaunches
every process, SLURM requeues the batch script, Kubernetes restarts the pod. ``plan`` decides what
that command does with its ``--out`` directory, on every process, before the process group starts
(no process writes there before all have joined, so all of them see the same directory):

    empty or missing                  -> a fresh run
    the same run, with a checkpoint   -> continue it exactly as ``--resume DIR`` would
    the same run, no checkpoint yet   -> start it over there (as ``--resume`` does)
    the same run, finished            -> nothing to do (``fit`` says so and returns)
    another run, an imported
    checkpoint, other files           -> a one-line error naming the first differing key

"The same run" means the command's resolved config equals the run's ``config.yaml`` except for
the run-neutral keys (``config.RUN_NEUTRAL_KEYS``, which a resume may change) and what the run
decided itself: the steps a ``--budget`` fixed (``train.steps``) and the narrower WRN it chose
(``model.name``, with ``train.budget_min_epochs``), and the sha256 of the weights ``--init`` took
(``train.init_sha256``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from wrn.errors import UserError
from wrn.rundir import IMPORTED
from wrn.train import checkpoint
from wrn.train.config import RUN_NEUTRAL_KEYS, Config, config_from_dict, valid_keys, validate

# What a run (or its killed first attempt) may leave in its directory before config.yaml exists:
# the writability probe, a half-written checkpoint, the budget's scratch checkpoint, the fitted ZCA.
_LEFTOVERS = (".write-test-", ".checkpoint.tmp-", ".budget-probe", "zca.safetensors")


class Plan(NamedTuple):
    """What ``wrn train --out DIR`` does: ``cfg`` to train, and whether to ``resume`` in DIR."""
    cfg: Config
    resume: bool
    auto: dict[str, Any] | None = None  # for the resume record: how the restart came about


def restart_count() -> int | None:
    """torchrun's TORCHELASTIC_RESTART_COUNT (0 on the first attempt); None outside torchrun."""
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return int(count) if count and count.isdigit() else None


def refuse_imported(out: Path) -> None:
    """An imported checkpoint (``wrn import``) holds weights but no training state: it is never
    continued (training it would overwrite the import); fine-tuning starts a new run from it."""
    if (Path(out) / IMPORTED).is_file():
        raise UserError(f"{out} holds an imported checkpoint, not a training run to continue: fine-tune from it with "
                        f"wrn train --init {out} --out NEW_DIR")


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def _narrowed_from(saved: str, wanted: str) -> bool:
    """``saved`` is a WRN a budget may train instead of ``wanted`` (budget.narrower_model): the
    same depth, the width halved one or more times."""
    from wrn.models.wide_resnet import parse_wrn

    a, b = parse_wrn(saved), parse_wrn(wanted)
    if a is None or b is None or a[0] != b[0]:
        return False
    width = b[1]
    while width > 1:
        width //= 2
        if width == a[1]:
            return True
    return False


def decided_keys(saved: Config, wanted: Config) -> set[str]:
    """The keys whose saved value the run chose itself: a fine-tuning run records the sha256 of the
    weights it took; a budget fixes its warm-up in steps before the first step, then its steps, and
    may train a narrower model."""
    keys = {"train.init_sha256"} if saved.train.init_sha256 and not wanted.train.init_sha256 else set()
    if not saved.train.time_budget or wanted.train.steps:
        return keys
    keys |= {"train.steps"} if saved.train.steps else set()
    if not wanted.optim.warmup_steps:
        keys.add("optim.warmup_steps")
    if saved.train.budget_min_epochs and _narrowed_from(saved.model.name, wanted.model.name):
        keys.add("model.name")
    return keys


def first_difference(saved: Config, wanted: Config) -> tuple[str, Any, Any] | None:
    """(key, the run's value, the command's value) of the first key, in ``valid_keys`` order, that
    makes ``wanted`` another run than ``saved``; None when they are the same run."""
    a, b = _flat(saved), _flat(wanted)
    skip = decided_keys(saved, wanted)
    for key in valid_keys():
        if key.startswith(RUN_NEUTRAL_KEYS) or key in skip:
            continue
        if a[key] != b[key]:
            return key, a[key], b[key]
    return None


def _resumed(saved: Config, wanted: Config) -> Config:
    """The run's own config with the command's run-neutral values (threads, logging, checkpoints)."""
    for key in valid_keys():
        if key.startswith(RUN_NEUTRAL_KEYS):
            section, _, name = key.partition(".")
            setattr(getattr(saved, section), name, getattr(getattr(wanted, section), name))
    validate(saved)
    return saved


def _empty(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and all(p.name.startswith(_LEFTOVERS) for p in out.iterdir()))


def plan(out: str | Path, wanted: Config) -> Plan:
    """What ``wrn train --out out`` with the resolved config ``wanted`` does (see the module doc)."""
    out = Path(out)
    if _empty(out):
        return Plan(wanted, resume=False)
    if not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file: choose a directory")
    if not (out / "config.yaml").is_file():
        raise UserError(f"--out {str(out)!r} is not empty and holds no run (no config.yaml): choose another --out")
    refuse_imported(out)
    try:
        data = yaml.safe_load((out / "config.yaml").read_text())
        saved = config_from_dict(data)
    except (OSError, yaml.YAMLError, UserError) as e:
        raise UserError(f"--out {str(out)!r}: its config.yaml is unreadable ({str(e).splitlines()[0]}): "
                        "choose another --out") from None
    diff = first_difference(saved, wanted)
    if diff:
        key, theirs, ours = diff
        raise UserError(f"--out {str(out)!r} holds another run: its {key} is {theirs!r}, this command's is {ours!r}: "
                        f"choose another --out, or continue that run with --resume {out}")
    auto: dict[str, Any] = {"auto": True}
    if restart_count() is not None:
        auto["restart_count"] = restart_count()
    return Plan(_resumed(saved, wanted), resume=True, auto=auto)
