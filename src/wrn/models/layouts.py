"""Other codebases' state-dict key layouts <-> ours, for ``wrn import``.

    layout         codebase                                     keys (first block; head)
    wrn            this project (wrn-D-K)                       conv2.0.bn / branch.0 / branch.1 / branch.3 / shortcut; bn, fc
    xternalz       xternalz/TRADES WideResNet (RobustBench)    block1.layer.0.bn1 / conv1 / bn2 / conv2 / convShortcut; bn1, fc
    dm             DeepMind DMWideResNet (RobustBench)         layer.0.block.0.batchnorm_0 / conv_0 / batchnorm_1 / conv_1 / shortcut; batchnorm, logits
    ssl            USB since Nov 2022                           as xternalz, plus conv1.bias; classifier
    ssl-torchssl   TorchSSL                                     as xternalz, plus a bias on every conv; fc
    ssl-usb-early  USB before Nov 2022                          the same keys as TorchSSL (another forward)
    torchvision    torchvision/timm ImageNet ResNets            conv1, bn1, layer1.0.conv1 ..., fc (ours already)

Our WRN variants (``variants.py``) share ``wrn``'s key names, so one map per layout serves them
all. Everything here is plain dict work on names and shapes; no tensor is copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from wrn.errors import UserError

LAYOUTS = ("wrn", "xternalz", "dm", "ssl", "ssl-torchssl", "ssl-usb-early", "torchvision")
SSL_CODEBASE = {"ssl": "usb", "ssl-torchssl": "torchssl", "ssl-usb-early": "usb-early"}
# Wrappings that training scripts put around a state dict, in the order they are tried. USB and
# TorchSSL save {"model": ..., "ema_model": ...} and evaluate the EMA weights: those come first.
WRAPPERS = ("ema_model", "state_dict", "model", "model_state_dict", "net", "network")
PREFIXES = ("module.", "model.")  # DDP / DataParallel; RobustBench's wrappers (all keys or none)


@dataclass(frozen=True)
class KeyMap:
    """Foreign block ``template`` (``{g}`` group, ``{i}`` block) with sub-module renames, and the
    top-level renames. ``first_group``: the foreign index of the first group (block1 vs layer.0)."""
    template: str
    first_group: int
    sub: dict[str, str]
    top: dict[str, str]
    dropped: tuple[str, ...] = ()  # foreign prefixes that hold weights the forward never uses
    _re: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pattern = re.escape(self.template).replace(r"\{g\}", r"(?P<g>\d+)").replace(r"\{i\}", r"(?P<i>\d+)")
        object.__setattr__(self, "_re", re.compile(pattern + r"(?P<rest>.+)"))

    def to_ours(self, key: str) -> str | None:
        m = self._re.fullmatch(key)
        if m:
            rest = _rename(m["rest"], self.sub)
            return None if rest is None else f"conv{int(m['g']) - self.first_group + 2}.{m['i']}.{rest}"
        return _rename(key, self.top)

    def from_ours(self, key: str) -> str | None:
        m = re.fullmatch(r"conv([234])\.(\d+)\.(.+)", key)
        if m:
            rest = _rename(m[3], {o: f for f, o in self.sub.items()})
            g = int(m[1]) - 2 + self.first_group
            return None if rest is None else self.template.format(g=g, i=m[2]) + rest
        return _rename(key, {o: f for f, o in self.top.items()})


def _rename(key: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    return None


_XTERNALZ_SUB = {"bn1": "bn", "conv1": "branch.0", "bn2": "branch.1", "conv2": "branch.3", "convShortcut": "shortcut"}
_OURS_SUB = {k: k for k in ("bn", "branch.0", "branch.1", "branch.3", "shortcut")}
MAPS: dict[str, KeyMap] = {
    "wrn": KeyMap("conv{g}.{i}.", 2, _OURS_SUB, {"conv1": "conv1", "bn": "bn", "fc": "fc"}),
    "xternalz": KeyMap("block{g}.layer.{i}.", 1, _XTERNALZ_SUB, {"conv1": "conv1", "bn1": "bn", "fc": "fc"},
                       dropped=("sub_block1.",)),
    "dm": KeyMap("layer.{g}.block.{i}.", 0,
                 {"batchnorm_0": "bn", "conv_0": "branch.0", "batchnorm_1": "branch.1", "conv_1": "branch.3",
                  "shortcut": "shortcut"},
                 {"init_conv": "conv1", "batchnorm": "bn", "logits": "fc"}),
    "ssl": KeyMap("block{g}.layer.{i}.", 1, _XTERNALZ_SUB, {"conv1": "conv1", "bn1": "bn", "classifier": "fc"}),
    "ssl-old": KeyMap("block{g}.layer.{i}.", 1, _XTERNALZ_SUB, {"conv1": "conv1", "bn1": "bn", "fc": "fc"}),
}
MAPS["ssl-torchssl"] = MAPS["ssl-usb-early"] = MAPS.pop("ssl-old")


# Keys every file of a layout holds (a file without one is not of that layout).
SIGNATURES = {
    "wrn": ("conv1.weight", "conv2.0.bn.weight", "bn.weight", "fc.weight"),
    "xternalz": ("conv1.weight", "block1.layer.0.bn1.weight", "bn1.weight", "fc.weight"),
    "dm": ("init_conv.weight", "layer.0.block.0.batchnorm_0.weight", "batchnorm.weight", "logits.weight"),
    "ssl": ("conv1.weight", "conv1.bias", "block1.layer.0.bn1.weight", "bn1.weight", "classifier.weight"),
    "ssl-torchssl": ("conv1.bias", "block1.layer.0.conv1.bias", "bn1.weight", "fc.weight"),
    "torchvision": ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"),
}
SIGNATURES["ssl-usb-early"] = SIGNATURES["ssl-torchssl"]


def same_layout(layout: str, detected: str | None) -> bool:
    """``detected`` (from keys) agrees with ``layout``: TorchSSL and early USB share their keys."""
    return detected == layout or (layout == "ssl-usb-early" and detected == "ssl-torchssl")


def foreign_name(layout: str, ours: str) -> str:
    """Our key under ``layout``'s names where it has one (for messages), else our key."""
    return ours if layout == "torchvision" else (MAPS[layout].from_ours(ours) or ours)


def detect(keys: list[str]) -> str | None:
    """The layout that ``keys`` look like (for errors that name the right --layout), or None."""
    has = set(keys).__contains__
    if has("init_conv.weight") or any(k.startswith("layer.0.block.") for k in keys):
        return "dm"
    if any(k.startswith("block1.layer.0.") for k in keys):
        if any(k.startswith("classifier.") for k in keys):
            return "ssl"
        if has("block1.layer.0.conv1.bias"):
            return "ssl-torchssl"  # or ssl-usb-early: the same keys
        return "xternalz"
    if has("layer1.0.conv1.weight"):
        return "torchvision"
    if has("conv2.0.bn.weight"):
        return "wrn"
    return None


def unwrap(obj: Any, state_key: str | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside a loaded checkpoint, and notes saying what was taken or dropped.

    ``state_key`` picks an entry of the wrapping dict (e.g. ``model`` rather than USB's
    ``ema_model``); by default the first of ``WRAPPERS`` present is taken."""
    notes: list[str] = []
    while isinstance(obj, dict) and not _is_state_dict(obj):
        entries = [k for k, v in obj.items() if isinstance(v, dict)]
        if state_key is not None:
            if state_key not in entries:
                raise UserError(f"the checkpoint has no entry {state_key!r}: it holds {', '.join(map(str, entries)) or 'none'}")
            key, state_key = state_key, None
        else:
            key = next((k for k in WRAPPERS if k in entries), None)
            if key is None:
                raise UserError(f"no state dict found in the checkpoint (its entries: {', '.join(map(str, obj)) or 'none'}): "
                                f"save model.state_dict(), or name the entry with --state-key")
        others = [k for k in entries if k != key]
        notes.append(f"took the weights under {key!r}" + (f" (also there: {', '.join(map(str, others))}; "
                                                         f"--state-key picks another)" if others else ""))
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise UserError("the file does not hold a state dict of tensors: save model.state_dict() with torch.save")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"entry {bad[0]!r} of the state dict is a {type(obj[bad[0]]).__name__}, not a tensor")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
            notes.append(f"stripped the {prefix!r} prefix")
    return dict(obj), notes


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def to_ours(layout: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(our state dict, notes, foreign keys that map to nothing)."""
    if layout == "torchvision":
        return dict(state), [], []
    km = MAPS[layout]
    out: dict[str, torch.Tensor] = {}
    unmapped, dropped = [], []
    for key, value in state.items():
        if km.dropped and key.startswith(km.dropped):
            dropped.append(key)
            continue
        ours = km.to_ours(key)
        if ours is None:
            unmapped.append(key)
        else:
            out[ours] = value
    notes = [f"dropped {len(dropped)} tensors under {', '.join(km.dropped)} (unused by the forward)"] if dropped else []
    if layout == "xternalz" and "fc.weight" in out and "fc.bias" not in out:
        # RobustBench's bias_last=False: a zero bias computes the same logits.
        out["fc.bias"] = torch.zeros(out["fc.weight"].shape[0], dtype=out["fc.weight"].dtype)
        notes.append("the classifier has no bias (bias_last=False): added a zero one")
    return out, notes, unmapped


def from_ours(layout: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under ``layout``'s key names (the inverse of ``to_ours``)."""
    if layout == "torchvision":
        return dict(state)
    km = MAPS[layout]
    out = {}
    for key, value in state.items():
        foreign = km.from_ours(key)
        if foreign is None:
            raise ValueError(f"{key!r} has no name in the {layout} layout")
        out[foreign] = value
    return out


_TORCHVISION = {((3, 4, 6, 3), 64): "resnet50", ((3, 4, 6, 3), 128): "wide_resnet50_2",
                ((3, 4, 23, 3), 128): "wide_resnet101_2"}


def infer(layout: str, state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(model name, constructor keywords) from the shapes of our-layout ``state``."""
    if layout == "torchvision":
        counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
        inner = _shape(state, "layer1.0.conv1.weight")[0]
        name = _TORCHVISION.get((counts, inner))
        if name is None:
            raise UserError(f"blocks per stage {counts} with inner width {inner} are none of "
                            f"{', '.join(_TORCHVISION.values())}: give model.name")
        return name, {"num_classes": _shape(state, "fc.weight")[0]}
    n = len({k.split(".")[1] for k in state if k.startswith("conv2.")})
    groups = [len({k.split(".")[1] for k in state if k.startswith(f"conv{g}.")}) for g in (2, 3, 4)]
    if n == 0 or len(set(groups)) != 1:
        raise UserError(f"blocks per group {groups} are not a WRN's (three equal groups): give model.name")
    branch = {k.split(".")[3] for k in state if k.startswith("conv2.0.branch.")}
    if branch != {"0", "1", "3"} or _shape(state, "conv2.0.branch.0.weight")[2:] != (3, 3):
        raise UserError("the blocks are not B(3,3) with dropout off: give model.name and model.block")
    width, rem = divmod(_shape(state, "conv2.0.branch.0.weight")[0], 16)
    if rem or width < 1:
        raise UserError(f"the first group's width {_shape(state, 'conv2.0.branch.0.weight')[0]} is not 16k: give model.name")
    depth = 6 * n + 4
    kwargs: dict[str, Any] = {"num_classes": _shape(state, "fc.weight")[0]}
    in_channels = _shape(state, "conv1.weight")[1]
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    if layout == "dm":
        return f"dm-wrn-{depth}-{width}", kwargs
    if layout in SSL_CODEBASE:
        return f"ssl-wrn-{depth}-{width}", {**kwargs, "codebase": SSL_CODEBASE[layout]}
    return f"wrn-{depth}-{width}", {**kwargs, "dropout": 0.0}


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise UserError(f"tensor {key!r} is missing: the file is not a complete network of this layout")
    return tuple(state[key].shape)
