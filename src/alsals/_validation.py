"""Argument checks with messages that say what was expected (shared by the configuration classes)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional


def check_range(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in the interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}")


def check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False, what: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int >= minimum`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        detail = f" ({what})" if what else ""
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{detail}{none}, got {value!r}")


def check_bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False{' or None' if allow_none else ''}, got {value!r}")


def check_choice(name: str, value: Any, allowed: Iterable[Optional[str]]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
