"""Model registry: ``@register_model`` builders, ``create_model(name, **kwargs)``, ``list_models()``.

Names are a family prefix and its numbers, e.g. ``wrn-28-10``: a builder registered for the pattern
``wrn-{depth}-{width}`` receives ``depth`` and ``width`` as ints. Every model made here remembers how
it was made (``model.model_args``) so that a checkpoint can rebuild it without a config.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# Canonical names shown by list_models(); a pattern entry lists its common instances.
_LISTED: list[str] = []


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(pattern)) + "$")


def match_name(pattern: str, name: str) -> dict[str, int] | None:
    """The numbers of ``name`` under ``pattern`` (``match_name("wrn-{depth}-{width}", "wrn-28-10")``
    -> ``{"depth": 28, "width": 10}``), or None when it is not of that family."""
    m = _pattern_regex(pattern).fullmatch(name)
    return {k: int(v) for k, v in m.groupdict().items()} if m else None


def register_model(pattern: str, examples: tuple[str, ...] = ()):
    """Register a builder under ``pattern`` (``{field}`` parts are ints passed as keywords)."""

    def wrap(fn):
        if pattern in _BUILDERS:
            raise ValueError(f"model {pattern!r} is registered twice")
        _BUILDERS[pattern] = fn
        _LISTED.extend(examples or (pattern,))
        return fn

    return wrap


def _resolve(name: str):
    for pattern, fn in _BUILDERS.items():
        fields = match_name(pattern, name)
        if fields is not None:
            return fn, fields
    return None, None


def _check_kwargs(name: str, fn: Callable[..., nn.Module], fields: dict, kwargs: dict) -> None:
    # A misspelt keyword would be a TypeError with a traceback; make it a ValueError with the fix.
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in fields]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]}?" if close else f"accepted: {', '.join(accepted)}"
            raise ValueError(f"{name} has no argument {key!r}: {hint}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model("wrn-28-10", num_classes=10, dropout=0.3)``."""
    fn, fields = _resolve(name)
    if fn is None:
        close = difflib.get_close_matches(name, _LISTED, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `wrn info --list`"
        raise ValueError(f"unknown model {name!r}: {hint}")
    _check_kwargs(name, fn, fields, kwargs)
    model = fn(**fields, **kwargs)
    model.model_args = {"name": name, **kwargs}
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Registered names (with pattern families shown by their usual members), glob-filtered."""
    return sorted(n for n in dict.fromkeys(_LISTED) if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return _resolve(name)[0] is not None
