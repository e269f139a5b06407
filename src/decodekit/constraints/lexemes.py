"""Regular expressions that can match no text at all, found before llguidance sees them.

llguidance 1.9 never returns from computing the first token mask of a grammar with such a
terminal (``start: A B`` with ``B: /[^\\s\\S]+/``: its lexer keeps growing), so a grammar or
regex constraint with one is refused with the terminal named instead. The check reads the
expression with Python's own regex parser; what that parser cannot read, or cannot decide
(look-arounds, back-references), is left to llguidance.
"""

from __future__ import annotations

import re

try:  # Python >= 3.11 names the parser module re._parser (sre_parse before)
    from re import _constants as sre  # type: ignore[attr-defined]
    from re import _parser as parser
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as sre  # type: ignore[no-redef]
    import sre_parse as parser  # type: ignore[no-redef]

_COMPLEMENTS = {
    frozenset({sre.CATEGORY_DIGIT, sre.CATEGORY_NOT_DIGIT}),
    frozenset({sre.CATEGORY_SPACE, sre.CATEGORY_NOT_SPACE}),
    frozenset({sre.CATEGORY_WORD, sre.CATEGORY_NOT_WORD}),
}
_LAST = 0x10FFFF


def _class_is_empty(items) -> bool:
    """A character class ``[...]`` that no character satisfies."""
    negated = bool(items) and items[0][0] is sre.NEGATE
    members = items[1:] if negated else items
    if not negated:
        return not members
    categories = {value for op, value in members if op is sre.CATEGORY}
    if any(pair <= categories for pair in _COMPLEMENTS):
        return True  # [^\s\S]: the complement of everything
    spans = sorted((value, value) if op is sre.LITERAL else value for op, value in members if op in (sre.LITERAL, sre.RANGE))
    reach = -1
    for low, high in spans:
        if low > reach + 1:
            return False
        reach = max(reach, high)
    return reach >= _LAST


def _empty(pattern) -> bool | None:
    """True: matches no string; False: matches some; None: undecided here."""
    undecided = False
    for op, value in pattern:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.AT):
            continue
        if op is sre.IN:
            if _class_is_empty(value):
                return True
        elif op is sre.BRANCH:
            branches = [_empty(b) for b in value[1]]
            if all(b is True for b in branches):
                return True
            undecided |= None in branches and not any(b is False for b in branches)
        elif op is sre.SUBPATTERN:
            inner = _empty(value[-1])
            if inner is True:
                return True
            undecided |= inner is None
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, _, body = value
            inner = _empty(body)
            if low >= 1 and inner is True:
                return True
            undecided |= low >= 1 and inner is None
        else:  # look-arounds, back-references, conditionals
            undecided = True
    return None if undecided else False


def matches_nothing(regex: str) -> bool:
    """True when ``regex`` certainly matches no string at all."""
    try:
        return _empty(parser.parse(regex)) is True
    except (re.error, RecursionError, OverflowError, ValueError, TypeError):
        return False


_LARK_REGEX = re.compile(r"/((?:\\.|[^/\\\n])+)/[imslux]*")


def empty_terminals(lark: str) -> list[str]:
    """The ``/regex/`` literals of a Lark grammar that match no text."""
    return [m.group(0) for m in _LARK_REGEX.finditer(lark) if matches_nothing(m.group(1))]
