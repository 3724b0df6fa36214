"""Typed config values: a YAML value or a ``key=value`` override's text -> the field's type
(bool, int within its limit, float, str, a duration, an optional or a tuple of these), or a
one-line UserError naming the key."""

from __future__ import annotations

import typing
from typing import Any

from wrn.errors import UserError
from wrn.units import parse_duration

# A duration in seconds; config values and overrides may also say 90s, 15m, 2h (units.parse_duration).
Seconds = typing.NewType("Seconds", float)
# Upper bounds for integer keys: a typo like train.epochs=1e99 is an instant error, not a run.
INT_LIMITS = {"train.epochs": 100_000, "train.batch_size": 1 << 20, "train.eval_batch_size": 1 << 20,
              "train.steps": 1 << 40, "optim.warmup_steps": 1 << 40, "train.seed": (1 << 63) - 1, "train.checkpoint_every": 1 << 40,
              "train.keep_every": 100_000, "data.val_size": 1 << 40, "data.subset": 1 << 40,
              "data.cutout": 1 << 16, "data.image_size": 1 << 16, "data.workers": 1024,
              "log.every_steps": 1 << 40, "model.num_classes": 1 << 24}

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def coerce(key: str, value: Any, tp) -> Any:
    """A YAML value or an override string -> the field's type, or a UserError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(key, value, inner)
    if value is None:
        raise UserError(f"{key} may not be empty: give a value")
    if origin is tuple:
        if isinstance(value, str):
            items = [i.strip() for i in value.strip().strip("()[]").split(",") if i.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise UserError(f"{key}={value!r} is not a list: write it like {key}=3,1,3")
        return tuple(coerce(key, i, args[0]) for i in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise UserError(f"{key}={value!r} is not a boolean: use true or false")
    if tp is int:
        # Integers only: 1e3 or 200.0 are refused (1e99 epochs would be "valid" otherwise).
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{key}={value!r} is not an integer: write it without a decimal point or exponent")
        try:
            number = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise UserError(f"{key}={value!r} is not an integer: write it without a decimal point or exponent") from None
        limit = INT_LIMITS.get(key)
        if limit is not None and number > limit:
            raise UserError(f"{key}={value!r} is too large (at most {limit})")
        return number
    if tp is Seconds:
        return parse_duration(key, value)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise UserError(f"{key}={value!r} is not a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}={value!r} is not a string")
    raise TypeError(f"config field {key} has an unsupported type {tp}")  # a bug here, not user input
