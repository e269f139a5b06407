"""Typed checks for config fields: each raises :class:`~decodekit.errors.ConfigError` naming the
field and what is allowed, so no wrong type or size reaches torch or Python arithmetic."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from decodekit.errors import ConfigError

MAX_SEED = 2**63 - 1
MAX_ROWS = 4096
"""Rows per request at most (``n``, ``num_beams``); memory is checked against the model too."""


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


INT64_MAX = 2**63 - 1
"""Settings become int64 tensors and counters: no integer setting may exceed it."""


def integer(field: str, value: Any, low: int, high: int | None = None, what: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (bools are not integers here); with no ``high``,
    at most :data:`INT64_MAX` (the setting becomes a tensor entry)."""
    span = f">= {low}" + (f" and <= {high}" if high is not None else " and below 2**63")
    allowed = f"an integer {span}" + (f" ({what})" if what else "")
    if not is_integer(value) or value < low or value > (INT64_MAX if high is None else high):
        raise ConfigError(field, value, allowed)
    return int(value)


def number(
    field: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    bounds = []
    if math.isfinite(low):
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if math.isfinite(high):
        bounds.append(f"<= {high:g}")
    allowed = " ".join(["a finite number", " and ".join(bounds)]).strip() + (f" ({what})" if what else "")
    if not is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(field, value, allowed)
    v = float(value)
    if v < low or v > high or (low_open and v == low):
        raise ConfigError(field, value, allowed)
    return v


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "True or False")
    return value


def seed(field: str, value: Any) -> int | None:
    if value is None:
        return None
    return integer(field, value, 0, MAX_SEED, "a random seed")


def choice(field: str, value: Any, options: Sequence) -> Any:
    if not any(value is o or (type(value) is type(o) and value == o) for o in options):
        raise ConfigError(field, value, f"one of {', '.join(repr(o) for o in options)}")
    return value


def token_ids(field: str, value: Any, vocab_size: int | None = None, *, empty: bool = True) -> tuple[int, ...]:
    """A sequence of token ids (not a bare int or a string), each in ``[0, vocab_size)``."""
    in_vocab = f" in [0, {vocab_size})" if vocab_size is not None else " >= 0"
    allowed = f"a list of token ids{in_vocab}" + ("" if empty else ", not empty")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(field, value, allowed)
    if not empty and not value:
        raise ConfigError(field, value, allowed)
    for i in value:
        if not is_integer(i) or i < 0 or (vocab_size is not None and i >= vocab_size):
            raise ConfigError(field, value, allowed)
    return tuple(int(i) for i in value)


def strings(field: str, value: Any) -> tuple[str, ...]:
    """A list of non-empty strings (a bare string is refused: it is not a list of them)."""
    allowed = 'a list of non-empty strings, e.g. ["\\n\\n"]'
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(field, value, allowed)
    if not all(isinstance(s, str) and s for s in value):
        raise ConfigError(field, value, allowed)
    for s in value:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(field, value, "strings of valid Unicode (no lone surrogates)") from None
    return tuple(value)
