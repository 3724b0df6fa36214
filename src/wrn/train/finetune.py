"""Fine-tuning: a run that starts from another run's weights (``wrn train --init DIR``, ``train.init``).

    wrn import Rebuffi2021Fixing_70_16_cutmix_extra.pt --layout dm --out runs/rebuffi model.activation=silu
    wrn train --init runs/rebuffi --data cifar100 --preset quick optim.lr=0.01

DIR is a run directory (``wrn train --out`` or ``wrn import --out``) or one of its checkpoint
directories; its newest complete checkpoint gives the weights (``checkpoint.start_weights``).

- **Architecture**: the source's. ``--init`` sets ``model.name``/``block``/``blocks_per_group``/``dropout``/
  ``activation`` from DIR (``with_init``; the command's own ``key=value`` win), and the constructor
  arguments the config has no key for (dm-wrn's ``mean``/``std``, ssl-wrn's ``codebase``) are
  inherited (``inherited_args``). Every tensor must then match in name and shape: the first that
  does not is named in one line, before training. Same tensors under another model name or
  activation (they compute another function) are refused too.
- **Classifier**: kept when the class count is the source's; otherwise the model's own fresh
  ``fc`` (seeded by ``train.seed`` like every fresh init, so a replay is exact), said in the log.
- **Inputs**: ``--init`` also sets the input convention the weights were trained on (the source's
  mean/std, ``none`` for [0, 1] pixels and for models that normalise inside, ``zca`` refitted on
  the new data), unless the command sets ``data.normalize``/``data.mean``/``data.std``.
- **A budget** (``--budget``) fixes the steps as usual but never narrows the net: ``--init`` sets
  ``train.budget_min_epochs=0``.
- **Everything else is fresh**: optimizer state, schedule, step 0, the recipe's settings.
- **Recorded**: ``train.init`` and ``train.init_sha256`` (the weights' sha256) in config.yaml, an
  ``init`` record in log.jsonl and in each checkpoint's state.json. A resume restores its own
  checkpoint and never reads DIR again; a replay of config.yaml needs DIR with the same weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from wrn import rundir
from wrn.errors import UserError
from wrn.models import create_model
from wrn.models.variants import normalizes_inside
from wrn.train import checkpoint
from wrn.train.config import Config, parse_override

# Every model's classifier is its ``fc`` Linear (models/layers.Classifier): a new class count
# replaces exactly these tensors.
CLASSIFIER = "fc."
# The constructor arguments a config states (model.* and the data's class count); the source's
# other arguments are inherited by the fine-tuned model.
CONFIG_ARGS = ("name", "num_classes", "dropout", "block", "blocks_per_group", "activation")
# What --init sets from the source (unless the command sets it): the model keys that fix its tensors
# and function (and model.dropout), and the input convention.
MODEL_KEYS = ("name", "block", "blocks_per_group", "activation")
DATA_KEYS = {"data.normalize", "data.mean", "data.std"}


@dataclass
class Source:
    """The run directory a fine-tuning run starts from, and the checkpoint chosen there."""
    path: str  # as the user gave it (config.yaml's train.init)
    ckpt_dir: Path
    state: dict[str, Any]  # the checkpoint's state.json

    @property
    def model_args(self) -> dict[str, Any]:
        return dict(self.state.get("model_args") or {})


def _checked_dir(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"train.init {path}: no such directory: give the --out of a wrn train or wrn import run")
    is_ckpt = (p / rundir.STATE).is_file() or p.name in (checkpoint.CHECKPOINT, checkpoint.OLD) \
        or p.parent.name == checkpoint.KEPT
    if not p.is_dir() or not ((p / rundir.CONFIG).is_file() or is_ckpt):
        raise UserError(f"train.init {path} is not a run directory (no config.yaml or checkpoint/): give the --out "
                        "of a wrn train or wrn import run")
    if not is_ckpt and not checkpoint.saved_any(p):
        raise UserError(f"train.init {path}: the run has no checkpoint yet (it is starting, or stopped before its "
                        "first): give a run that has trained")
    return p


def find_source(path: str) -> Source:
    """The newest complete checkpoint of the run ``path`` (its files' checksums verified)."""
    run = _checked_dir(path)
    try:
        ckpt = checkpoint.find_checkpoint(run)
    except UserError as e:  # every checkpoint there damaged: say which directory it was about
        raise UserError(f"train.init {path}: {e}") from None
    state = checkpoint.read_state(ckpt, verify=False)  # find_checkpoint has just verified it
    if not state or not (state.get("model_args") or {}).get("name"):
        raise UserError(f"train.init {path}: {ckpt / rundir.STATE} has no model_args: it was not written by wrn")
    return Source(str(path), ckpt, state)


def inherited_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """The source's constructor arguments that no config key states (dm-wrn's mean/std, ssl-wrn's
    codebase): the fine-tuned model takes them as they are."""
    return {k: v for k, v in model_args.items() if k not in CONFIG_ARGS}


def prepare(cfg: Config, ckpt_dir: Path | None) -> tuple[Source | None, dict[str, Any] | None]:
    """(the source to start from, the model arguments inherited from it) for a run with train.init;
    (None, None) without. A resume (``ckpt_dir``: its own checkpoint) never reads DIR again: its
    checkpoint holds the weights and the inherited arguments."""
    if not cfg.train.init:
        return None, None
    if ckpt_dir is not None:
        return None, inherited_args((checkpoint.read_state(ckpt_dir, verify=False) or {}).get("model_args") or {})
    source = find_source(cfg.train.init)
    return source, inherited_args(source.model_args)


def _value(v: Any) -> str:
    if v is None:
        return "none"  # the model's own default
    if isinstance(v, (list, tuple)):
        return ",".join(repr(float(x)) if isinstance(x, float) else str(x) for x in v)
    return str(v)


def _input_overrides(name: str, state: dict[str, Any]) -> list[str]:
    """The input convention the source's weights were trained on, as data.* overrides."""
    norm = state.get("normalize") or {}
    mean, std = norm.get("mean"), norm.get("std")
    if norm.get("zca"):  # the whitening is the source data's: refitted on the new data, same epsilon
        eps = ((state.get("config") or {}).get("data") or {}).get("zca_epsilon", 0.1)
        return ["data.normalize=zca", f"data.zca_epsilon={eps}", "data.mean=none", "data.std=none"]
    if normalizes_inside(name) or not mean or not std or (not any(mean) and all(s == 1 for s in std)):
        return ["data.normalize=none", "data.mean=none", "data.std=none"]  # [0, 1] pixels
    return ["data.normalize=dataset", f"data.mean={_value(list(mean))}", f"data.std={_value(list(std))}"]


def _peek_state(path: str) -> dict[str, Any]:
    """state.json of the run's newest checkpoint, unverified (the run verifies it when it loads the
    weights): what the command line needs to know of the source, read cheaply."""
    p = _checked_dir(path)
    state = rundir.read_json(p / rundir.STATE) or rundir.newest_state(p) or {}
    if not (state.get("model_args") or {}).get("name"):
        find_source(path)  # says why: damaged, or not written by wrn
        raise UserError(f"train.init {path}: its checkpoint has no model_args: it was not written by wrn")
    return state


def with_init(overrides: Sequence[str], init: str | None) -> list[str]:
    """A ``wrn train`` command's overrides with what ``--init DIR`` (or ``train.init=DIR``) implies in
    front of them, so that the command's own keys win: the source's model and input convention."""
    given = dict(parse_override(text) for text in overrides)
    init = init or given.get("train.init")
    if not init:
        return list(overrides)
    state = _peek_state(init)
    args = state["model_args"]
    derived = [f"model.{k}={_value(args.get(k))}" for k in MODEL_KEYS if f"model.{k}" not in given]
    if "model.dropout" not in given:  # a Dropout module shifts the block's tensor names: 0 or not is architecture
        derived.append(f"model.dropout={args.get('dropout', 0.0)}")
    if "train.budget_min_epochs" not in given:  # a budget never trains a narrower net instead of the source's
        derived.append("train.budget_min_epochs=0")
    if not DATA_KEYS & set(given):
        derived += _input_overrides(args["name"], state)
    return derived + list(overrides) + [f"train.init={init}"]


def _fail(source: Source, message: str) -> UserError:
    return UserError(f"train.init {source.path}: {message}")


def _check_tensors(source: Source, model: nn.Module, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                   fresh: set[str], weights: str) -> None:
    src, name = source.model_args["name"], model.model_args["name"]
    hint = (f"fine-tuning keeps the architecture: {source.path} holds {src} (--init sets model.* from it; "
            "drop the model.* overrides that differ)")
    had, has = float(source.model_args.get("dropout") or 0), float(model.model_args.get("dropout") or 0)
    if (had > 0) != (has > 0):  # nn.Dropout sits between a block's convs and shifts their names
        hint = (f"model.dropout={has:g} adds or removes the Dropout layer that sits between a block's convs, and "
                f"{source.path}'s net has dropout {had:g}: fine-tune with dropout {'> 0' if had else '0'}")
    for key, want in expected.items():
        if key in fresh:
            continue
        if key not in found:
            raise _fail(source, f"tensor {key!r} of {name} is missing from its {weights} ({src}): {hint}")
        if tuple(found[key].shape) != tuple(want.shape):
            raise _fail(source, f"tensor {key!r} is {list(found[key].shape)} in its {weights} ({src}) but "
                                f"{list(want.shape)} in {name}: {hint}")
    extra = [k for k in found if k not in expected and not (fresh and k.startswith(CLASSIFIER))]
    if extra:
        raise _fail(source, f"tensor {extra[0]!r} of its {weights} ({src}) is not in {name}: {hint}")


def _check_function(source: Source, model: nn.Module) -> None:
    """Same tensors, same function: the model's name and activation (no shape shows them)."""
    src, name = source.model_args, model.model_args["name"]
    if src["name"] != name:
        raise _fail(source, f"it holds {src['name']}, this run builds {name}: the same tensors compute another "
                            f"function there; drop model.name (--init takes {src['name']})")
    with torch.device("meta"):  # the source's own defaults, resolved by its constructor
        ref = create_model(src["name"], **{k: v for k, v in src.items() if k != "name"})
    if getattr(ref, "activation", None) != getattr(model, "activation", None):
        raise _fail(source, f"its {name} has activation {ref.activation!r}, this run's {model.activation!r}: "
                            f"drop model.activation (--init takes {ref.activation})")


def start_from(source: Source, model: nn.Module, cfg: Config) -> tuple[Config, dict[str, Any]]:
    """Load the source's weights into the freshly built (seeded) ``model``: all of them, or all but
    the classifier where the class count differs. Returns the config with ``train.init_sha256`` set
    and the record the log and the checkpoints keep. One-line errors before anything trains."""
    target = checkpoint.unwrap(model)
    weights, tensors, digest = checkpoint.start_weights(source.ckpt_dir, source.state, cfg.train.init_weights)
    recorded = cfg.train.init_sha256
    if recorded and digest != recorded:
        raise _fail(source, f"its weights ({source.ckpt_dir / weights}) have sha256 {digest[:16]}..., not the "
                            f"{recorded[:16]}... this config recorded: the directory changed since; give the one the "
                            "run started from, or drop train.init_sha256 to start from these weights")
    expected = target.state_dict()
    name = target.model_args["name"]
    classes = int(expected[CLASSIFIER + "weight"].shape[0])
    source_classes = int(tensors.get(CLASSIFIER + "weight", expected[CLASSIFIER + "weight"]).shape[0])
    # Another class count: the model's own fresh classifier stays (drawn from train.seed with the rest).
    fresh = {k for k in expected if k.startswith(CLASSIFIER)} if classes != source_classes else set()
    _check_tensors(source, target, expected, tensors, fresh, weights)
    _check_function(source, target)
    taken = {k: v for k, v in tensors.items() if k in expected and k not in fresh}
    target.load_state_dict({**{k: expected[k] for k in fresh}, **taken}, strict=True)
    record = {"source": source.path, "checkpoint": str(source.ckpt_dir), "weights": weights, "sha256": digest,
              "model": name, "source_step": source.state.get("step"), "imported": "imported" in source.state,
              "classifier": "new" if fresh else "kept", "source_classes": source_classes, "classes": classes,
              "source_normalize": source.state.get("normalize")}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_sha256=digest))
    return cfg, record


def describe(record: dict[str, Any], normalize: dict[str, Any]) -> str:
    """The log's line for humans: where the weights came from, the classifier, and the inputs where
    they differ from the ones the weights were trained on."""
    what = "an imported checkpoint" if record["imported"] else f"step {record['source_step']}"
    head = (f"classifier kept ({record['classes']} classes)" if record["classifier"] == "kept" else
            f"new classifier: {record['source_classes']} classes in the source, {record['classes']} here")
    line = (f"fine-tuning from {record['source']} ({what}, {record['weights']} sha256 {record['sha256'][:12]}): "
            f"{head}; optimizer, schedule and step start fresh")
    src = record.get("source_normalize") or {}
    if src and not _same_inputs(src, normalize):
        line += (f"; note: inputs are normalised with {_inputs(normalize)}, the source's weights were trained "
                 f"with {_inputs(src)} (data.normalize/data.mean/data.std choose)")
    return line


def _inputs(norm: dict[str, Any]) -> str:
    if norm.get("zca"):
        return "ZCA whitening"
    return f"mean {[round(x, 4) for x in norm.get('mean') or []]} std {[round(x, 4) for x in norm.get('std') or []]}"


def _same_inputs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same input convention: both ZCA (each fitted on its own data), or the same mean and std."""
    if bool(a.get("zca")) or bool(b.get("zca")):
        return bool(a.get("zca")) == bool(b.get("zca"))

    def close(x, y) -> bool:
        return x is not None and y is not None and len(x) == len(y) and all(abs(p - q) < 1e-6 for p, q in zip(x, y))

    return close(a.get("mean"), b.get("mean")) and close(a.get("std"), b.get("std"))
