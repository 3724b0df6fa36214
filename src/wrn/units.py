"""Durations, the one way they are read and written: ``parse_duration`` for config values and
``--budget`` (``15m``, ``2h``), ``format_duration`` for prose ("15 min", "3.5 days") and
``format_clock`` for table columns ("1h05m")."""

from __future__ import annotations

import math
import re

from wrn.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
A_DAY_S = 86400.0


def parse_duration(key: str, value) -> float:
    """Seconds from ``900``, ``90s``, ``15m``, ``2h``, ``1h30m`` or ``1d``; 0 = no budget."""
    if isinstance(value, bool):
        raise UserError(f"{key}={value!r} is not a duration: write e.g. 90s, 15m or 2h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise UserError(f"{key}={value!r} is not a duration: write e.g. 90s, 15m or 2h") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0 or seconds > 365 * A_DAY_S:
        raise UserError(f"{key}={value!r} is out of range: give 0 (no budget) up to a year, e.g. 15m")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: "<1 s", "45 s", "15 min", "2.2 h", "3.5 days"."""
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * A_DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / A_DAY_S:.1f} days"


def format_clock(seconds: float | None) -> str:
    """A duration for a table column, to the second: "42s", "3m07s", "1h05m"; "-" when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
