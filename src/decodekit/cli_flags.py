"""Command-line flags derived from config dataclasses: one flag per field, so a flag always
maps onto exactly one config attribute (``--num-beams`` -> ``BeamSearch.num_beams``)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from decodekit.errors import ConfigError

ALIASES = {"n": "num-samples"}
"""Fields whose flag is spelled differently (a one-letter flag would be cryptic)."""


def flag_name(field: str) -> str:
    return "--" + ALIASES.get(field, field.replace("_", "-"))


def _parse_bool_or_never(text: str) -> bool | str:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    if lowered == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"{text!r}: expected true, false or never")


def _kind(hint: Any) -> tuple[Any, bool]:
    """(scalar parser, repeated?) for a field's type hint; None if it is not a CLI value."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if set(args) == {bool, str}:
            return _parse_bool_or_never, False
        if len(args) == 2 and typing.get_origin(args[1]) is tuple and typing.get_args(args[1])[0] is args[0]:
            return _kind(args[1])  # ``float | tuple[float, ...]``: one value, or one per repeat
        return _kind(args[0]) if len(args) == 1 else (None, False)
    if origin is tuple:
        return (args[0] if args[0] in (int, str, float) else None), True
    if hint in (int, float, str, bool):
        return hint, False
    return None, False


def add_config_flags(parser: argparse.ArgumentParser, cls: type, seen: set[str]) -> None:
    """Add one flag per field of dataclass ``cls`` not already in ``seen``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in seen or not field.init:
            continue
        parse, repeated = _kind(hints[field.name])
        if parse is None:
            continue
        seen.add(field.name)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"{cls.__name__}.{field.name} (default {default!r})"
        if parse is bool:
            parser.add_argument(flag_name(field.name), dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif repeated:
            parser.add_argument(flag_name(field.name), dest=field.name, type=parse, action="append", default=None, help=help_text + "; repeat for several")
        else:
            parser.add_argument(flag_name(field.name), dest=field.name, type=parse, default=None, help=help_text)


def config_from_flags(cls: type, args: argparse.Namespace, explicit_only: bool = True) -> Any:
    """Build ``cls`` from the flags the user gave (others keep the class defaults)."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def unused_flags(cls: type, args: argparse.Namespace, shared: set[str]) -> list[str]:
    """Flags given that ``cls`` does not have (e.g. ``--top-k`` with ``--strategy beam``)."""
    own = {f.name for f in dataclasses.fields(cls)} | shared
    return [n for n, v in vars(args).items() if v is not None and n not in own]


def reject_unused(strategy_name: str, cls: type, args: argparse.Namespace, shared: set[str]) -> None:
    for name in unused_flags(cls, args, shared):
        raise ConfigError(flag_name(name), getattr(args, name), f"a setting of another strategy, not of {strategy_name!r}")
