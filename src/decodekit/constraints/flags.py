"""Command-line flags for constraints: ``--json-schema FILE``, ``--regex PATTERN``,
``--grammar FILE`` (Lark), ``--catalog FILE`` (one entry per line), ``--corpus FILE`` (text).
Each maps onto one spec class; at most one may be given."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from decodekit.constraints.catalog import Catalog
from decodekit.constraints.corpus import CorpusSubstring
from decodekit.constraints.grammar import Grammar, JsonSchema, Regex
from decodekit.errors import ConfigError, InputError

CONSTRAINT_FLAGS = ("json_schema", "regex", "grammar", "catalog", "corpus")
"""The argparse destinations these flags use (not strategy or option fields)."""


def add_constraint_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("constraint (at most one)")
    group.add_argument("--json-schema", metavar="FILE", default=None, help="outputs are JSON valid under this JSON Schema file")
    group.add_argument("--regex", metavar="PATTERN", default=None, help="outputs match this regular expression in full")
    group.add_argument("--grammar", metavar="FILE", default=None, help="outputs derive from this Lark grammar file (start rule: start)")
    group.add_argument("--catalog", metavar="FILE", default=None, help="outputs are one line of this file (one entry per line)")
    group.add_argument("--corpus", metavar="FILE", default=None, help="outputs are substrings of this text file")


def _read(flag: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{flag}: cannot read {path!r} ({error.strerror})") from None


def constraint_from_args(args: argparse.Namespace):
    """The constraint spec the flags ask for, or None."""
    given = [name for name in CONSTRAINT_FLAGS if getattr(args, name, None) is not None]
    if len(given) > 1:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError("constraint", flags, "at most one of --json-schema, --regex, --grammar, --catalog, --corpus")
    if not given:
        return None
    name = given[0]
    value = getattr(args, name)
    if name == "regex":
        return Regex(value)
    text = _read("--" + name.replace("_", "-"), value)
    if name == "json_schema":
        try:
            return JsonSchema(json.loads(text))
        except json.JSONDecodeError as error:
            raise ConfigError("--json-schema", value, f"a file holding a JSON Schema (not JSON: {error.msg})") from None
    if name == "grammar":
        return Grammar(text)
    if name == "catalog":
        return Catalog([line for line in text.splitlines() if line])
    return CorpusSubstring(text)
