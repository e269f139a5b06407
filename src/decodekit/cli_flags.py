"""Command-line flags derived from config dataclasses: one flag per field, so a flag always
maps onto exactly one config attribute (``--num-beams`` -> ``BeamSearch.num_beams``)."""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
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


def _json_value(text: str) -> Any:
    """A JSON flag value: a ``{token: bias}`` map (keys: token ids, or comma-separated ids for
    a sequence), a ``[[ids, bias], ...]`` list (transformers' form) or a pair such as ``[3, 1.5]``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: not JSON ({error.msg})") from None
    if isinstance(value, dict):
        def key(k: str):
            parts = k.split(",")
            try:
                return int(k) if len(parts) == 1 else tuple(int(p) for p in parts)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{k!r}: keys are token ids") from None
        return {key(k): v for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], list) for x in value):
        return {tuple(ids): bias for ids, bias in value}
    return tuple(value) if isinstance(value, list) else value


def _kind(hint: Any) -> tuple[Any, bool]:
    """(scalar parser, repeated?) for a field's type hint; None if it is not a CLI value."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is collections.abc.Mapping or (origin is tuple and len(args) == 2 and args[1] is not Ellipsis and args[0] is not args[1]):
        return _json_value, False  # a map, or a fixed pair of different types
    if origin in (typing.Union, types.UnionType):
        if set(args) == {bool, str}:
            return _parse_bool_or_never, False
        if str in args:
            return str, False  # text or token ids (e.g. a context): text on the command line
        if len(args) == 2 and typing.get_origin(args[1]) is tuple and typing.get_args(args[1])[0] is args[0]:
            return _kind(args[1])  # ``float | tuple[float, ...]``: one value, or one per repeat
        return _kind(args[0]) if len(args) == 1 else (None, False)
    if origin is tuple:
        first = args[0]
        if typing.get_origin(first) in (typing.Union, types.UnionType) and str in typing.get_args(first):
            return str, True  # e.g. DRY's breakers: strings on the command line
        if typing.get_origin(first) in (tuple, typing.Union, types.UnionType):
            return _json_value, False  # nested token-id lists, e.g. bad words: one JSON flag
        return (first if first in (int, str, float) else None), True
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
