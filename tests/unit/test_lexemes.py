"""Regular expressions that match no text, found before llguidance (which would never finish
its first mask on a grammar holding one)."""

from __future__ import annotations

import pytest

from decodekit.constraints.lexemes import empty_terminals, matches_nothing


@pytest.mark.parametrize(
    ("regex", "empty"),
    [
        (r"[^\s\S]+", True), (r"[^\s\S]", True), (r"[^\d\D]{2,3}", True), (r"([^\s\S]|[^\w\W])", True),
        (r"[^\x00-\U0010ffff]", True), (r"(?:[^\s\S])+b", True), (r"a[^\s\S]", True),
        (r"a+", False), (r"[^\d\D]*", False), (r"(a|[^\w\W])", False), (r"[]a]", False), (r"[^a]", False),
        (r"a{0}[^\s\S]{0}", False), (r"", False), (r".", False),
        (r"x(?=y)[^\s\S]?", False),  # look-arounds are left to llguidance
        (r"\p{L}+", False), (r"(unclosed", False),  # what Python cannot read is left to llguidance
    ],
)
def test_matches_nothing(regex, empty):
    assert matches_nothing(regex) is empty


def test_the_empty_terminals_of_a_lark_grammar_are_named():
    assert empty_terminals("start: A B\nA: /a+/\nB: /[^\\s\\S]+/") == ["/[^\\s\\S]+/"]
    assert empty_terminals('start: "a/b/" C\nC: /[0-9]+/i') == []
    assert empty_terminals("start: /x/ | /[^\\d\\D]/i") == ["/[^\\d\\D]/i"]
