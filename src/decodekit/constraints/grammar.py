"""Grammar constraints through llguidance: JSON Schema, regular expressions, Lark grammars.

A grammar is compiled once per (grammar, tokenizer, vocabulary width) into a template
``llguidance.LLMatcher`` (cached); each decoding row gets a deep copy. Per step llguidance fills
one bitmask row per matcher in parallel (its executor), and the ``(rows, words)`` int32 bitmask
becomes the ``(rows, vocab)`` bool mask with three tensor ops. Beams forking from one parent
get deep copies of its matcher; rollback is llguidance's own.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decodekit.constraints.base import Cursor, Verdict
from decodekit.constraints.lexemes import empty_terminals, matches_nothing
from decodekit.errors import ConfigError, InputError

_CACHE_SIZE = 64
_compiled: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
_tokenizers: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
_lock = threading.Lock()
_SHIFTS = torch.arange(32, dtype=torch.int32)


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise InputError("grammar constraints need the 'llguidance' package (pip install llguidance)") from error
    return llguidance


def ll_tokenizer(tokenizer):
    """llguidance's view of a transformers fast tokenizer (built once per tokenizer: ~0.1-1 s)."""
    if tokenizer is None:
        raise InputError("constraint: grammar constraints need the model's tokenizer; load() one or pass it")
    llguidance = _llguidance()
    with _lock:
        hit = _tokenizers.get(id(tokenizer))
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
    try:
        built = llguidance.hf.from_tokenizer(tokenizer)
    except (ValueError, TypeError, AttributeError) as error:
        raise InputError(f"constraint: llguidance cannot read this tokenizer ({error}); a fast (Rust) tokenizer is needed") from None
    with _lock:
        _tokenizers[id(tokenizer)] = (tokenizer, built)  # holds the tokenizer so its id stays unique
        while len(_tokenizers) > 8:
            _tokenizers.popitem(last=False)
    return built


def _compile(kind: str, field: str, text: str, grammar_of, tokenizer, vocab_size: int, key=None) -> CompiledGrammar:
    llguidance = _llguidance()
    lltok = ll_tokenizer(tokenizer)
    if lltok.vocab_size > vocab_size:
        raise InputError(f"constraint: the tokenizer has {lltok.vocab_size} tokens but the model's logits cover {vocab_size}")
    key = (kind, key if key is not None else text, id(lltok), vocab_size)
    with _lock:
        if key in _compiled:
            _compiled.move_to_end(key)
            return _compiled[key]
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        grammar = grammar_of(text)
    except ValueError as error:
        raise ConfigError(field, shown, f"a valid {kind} (llguidance: {error})") from None
    error = llguidance.LLMatcher.validate_grammar(grammar, lltok, limits=parser_limits())
    if error:
        raise ConfigError(field, shown, f"a valid {kind} (llguidance: {error.strip()})")
    template = llguidance.LLMatcher(lltok, grammar, log_level=0, limits=parser_limits())
    if template.is_error():
        raise ConfigError(field, shown, f"a valid {kind} (llguidance: {template.get_error().strip()})")
    compiled = CompiledGrammar(field, template, lltok, vocab_size)
    with _lock:
        _compiled[key] = compiled
        while len(_compiled) > _CACHE_SIZE:
            _compiled.popitem(last=False)
    return compiled


def _paths_of(schema, key: str, path: str = "$") -> list[str]:
    """JSON paths (``$.properties.a``) of the objects in ``schema`` that hold ``key``."""
    found = []
    if isinstance(schema, dict):
        if key in schema:
            found.append(path)
        for name, value in schema.items():
            found += _paths_of(value, key, f"{path}.{name}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _paths_of(value, key, f"{path}[{i}]")
    return found


@dataclass(frozen=True)
class JsonSchema:
    """Outputs are JSON documents valid under ``schema`` (a dict or its JSON text), in
    llguidance's JSON Schema subset. ``whitespace``: allow whitespace between tokens (False:
    compact JSON, which keeps a small model from wandering off into indentation)."""

    schema: Mapping[str, Any] | str
    whitespace: bool = False
    name = "json_schema"

    def text(self) -> str:
        """The schema as JSON text, properties in the user's order (llguidance generates them
        in this order, so sorting keys would refuse valid instances)."""
        if isinstance(self.schema, str):
            return self.schema
        if self.schema is True:  # the boolean schema true: any JSON document
            return "{}"
        try:
            return json.dumps(self.schema)
        except (TypeError, ValueError) as error:
            raise ConfigError("json_schema", type(self.schema).__name__, f"JSON-serialisable (a JSON document): {error}") from None

    def compile(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> CompiledGrammar:
        from llguidance import LLMatcher

        if self.schema is False:
            raise ConfigError("json_schema", False, "a satisfiable schema (the boolean schema false matches nothing)")
        if not isinstance(self.schema, str | Mapping) and self.schema is not True:
            raise ConfigError("json_schema", self.schema, "a JSON Schema: a dict, its JSON text, or true")
        options = {"whitespace_flexible": bool(self.whitespace)}
        text = self.text()
        try:
            return _compile(
                "JSON Schema",
                "json_schema",
                text,
                lambda schema: LLMatcher.grammar_from_json_schema(schema, defaults=options),
                tokenizer,
                vocab_size,
                key=(text, self.whitespace),
            )
        except ConfigError as error:
            unsupported = re.search(r"Unimplemented keys: \[([^\]]*)\]", error.allowed)
            if unsupported is None:
                raise
            keys = [k.strip().strip('"') for k in unsupported.group(1).split(",") if k.strip()]
            schema = json.loads(text) if isinstance(self.schema, str) else self.schema
            where = ", ".join(f"{key!r} at {path}" for key in keys for path in _paths_of(schema, key)) or ", ".join(keys)
            raise ConfigError(
                "json_schema", where, "a schema without these keywords: the schema may be valid, but llguidance does not implement them"
            ) from None


@dataclass(frozen=True)
class Regex:
    """Outputs match ``pattern`` in full (Rust ``regex`` syntax, close to Python's ``re``)."""

    pattern: str
    name = "regex"

    def compile(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> CompiledGrammar:
        from llguidance import LLMatcher

        if not isinstance(self.pattern, str):
            raise ConfigError("regex", self.pattern, "a regular expression string")
        if matches_nothing(self.pattern):
            raise ConfigError("regex", self.pattern, "a regular expression that matches some text (this one matches none)")
        return _compile("regex", "regex", self.pattern, LLMatcher.grammar_from_regex, tokenizer, vocab_size)


@dataclass(frozen=True)
class Grammar:
    """Outputs derive from the Lark grammar ``lark`` (llguidance's Lark dialect; ``start`` is
    the start rule)."""

    lark: str
    name = "grammar"

    def compile(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> CompiledGrammar:
        from llguidance import LLMatcher

        if not isinstance(self.lark, str) or not self.lark.strip():
            raise ConfigError("grammar", self.lark, "a non-empty Lark grammar")
        empty = empty_terminals(self.lark)
        if empty:
            shown = self.lark if len(self.lark) <= 80 else self.lark[:77] + "..."
            raise ConfigError("grammar", shown, f"terminals that match some text: {empty[0]} matches none")
        return _compile("Lark grammar", "grammar", self.lark, LLMatcher.grammar_from_lark, tokenizer, vocab_size)


_executor = None


def _shared_executor():
    """One bounded llguidance thread pool for every compiled grammar (a pool per grammar
    would leave two OS threads behind for each schema ever compiled)."""
    global _executor
    import llguidance

    with _lock:
        if _executor is None:
            _executor = llguidance.LLExecutor(num_threads=2)
    return _executor


def parser_limits():
    """llguidance's resource limits, tightened so that a grammar whose lexer or parser would
    grow without bound fails (the row ends with finish reason ``constraint``) instead of
    hanging a decoding step; error texts without parser state dumps."""
    import llguidance

    return llguidance.LLParserLimits(step_lexer_fuel=200_000, step_max_items=50_000, max_lexer_states=50_000, verbose_errors=False)


class CompiledGrammar:
    """A grammar compiled for one tokenizer: the template matcher its cursors copy."""

    def __init__(self, name: str, template, lltokenizer, vocab_size: int):

        self.name = name  # json_schema, regex or grammar
        self.template, self.lltokenizer, self.vocab_size = template, lltokenizer, vocab_size
        self.tokenizer_vocab = int(lltokenizer.vocab_size)
        self.special = torch.tensor(sorted(set(lltokenizer.eos_tokens)), dtype=torch.long)
        self.executor = _shared_executor()

    def cursor(self, rows: int) -> GrammarCursor:
        return GrammarCursor(self, [self.template.deep_copy() for _ in range(rows)])

    def check(self, token_ids: Sequence[int]) -> Verdict:
        """Valid when a fresh matcher consumes every token and is then accepting."""
        if any(not 0 <= int(t) < self.tokenizer_vocab for t in token_ids):
            return Verdict(False)
        matcher = self.template.deep_copy()
        consumed = matcher.try_consume_tokens([int(t) for t in token_ids])
        return Verdict(consumed == len(token_ids) and matcher.is_accepting() and not matcher.is_error())

    def forced_tokens(self, cursor: GrammarCursor, row: int) -> list[int]:
        """Tokens the grammar forces next in ``row`` (fast-forward), possibly none."""
        return list(cursor.matchers[row].compute_ff_tokens())


class GrammarCursor(Cursor):
    """One llguidance matcher per row."""

    def __init__(self, compiled: CompiledGrammar, matchers: list):
        self.compiled, self.matchers = compiled, matchers
        words = (compiled.tokenizer_vocab + 31) // 32
        self.bitmask = torch.zeros((len(matchers), words), dtype=torch.int32)

    @property
    def rows(self) -> int:
        return len(self.matchers)

    def allowed(self, mask: torch.Tensor, remaining: int | None = None) -> None:
        """Fill ``mask`` (``(rows, vocab)`` bool) from llguidance's bitmasks."""
        compiled, rows = self.compiled, len(self.matchers)
        if self.bitmask.shape[0] != rows:
            self.bitmask = torch.zeros((rows, self.bitmask.shape[1]), dtype=torch.int32)
        # what llguidance.torch.fill_next_token_bitmask_par does, without importing that module
        # (it compiles a kernel with torch.compile at import time)
        words = self.bitmask.shape[1]
        targets = [(m, i) for i, m in enumerate(self.matchers)]
        compiled.executor.unsafe_compute_mask_ptr(targets, self.bitmask.data_ptr(), words * 4, rows)
        # (rows, words) int32 -> (rows, words, 32) bits -> (rows, words * 32) bool
        bits = ((self.bitmask.unsqueeze(-1) >> _SHIFTS) & 1).view(rows, -1)[:, : compiled.tokenizer_vocab]
        mask[:, : compiled.tokenizer_vocab] = bits.to(device=mask.device, dtype=torch.bool)
        # llguidance's EOS bit means "accepting"; the processor owns the EOS columns
        mask[:, compiled.special.to(mask.device)] = False

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        # subtle: one consume is ~0.2 us of Rust; llguidance's parallel consume costs more in
        # thread hand-off than it saves, so this is a plain loop
        # A matcher that fails (e.g. a lexer limit of llguidance reached) stays in its error
        # state: it allows nothing from then on, so the row ends and is reported with finish
        # reason "constraint" (never a raw error mid-decoding, never an invalid success).
        for matcher, token, ok in zip(self.matchers, tokens.tolist(), live.tolist(), strict=True):
            if ok:
                matcher.consume_token(token)

    def fork(self, parents: torch.Tensor) -> None:
        """New row i = old row ``parents[i]``; a parent's first child takes its matcher, the
        others deep copies."""
        used: set[int] = set()
        forked = []
        for parent in parents.tolist():
            matcher = self.matchers[parent]
            forked.append(matcher.deep_copy() if parent in used else matcher)
            used.add(parent)
        self.matchers = forked

    def rollback(self, count: int | torch.Tensor) -> None:
        counts = [int(count)] * len(self.matchers) if isinstance(count, int) else torch.as_tensor(count).tolist()
        for matcher, n in zip(self.matchers, counts, strict=True):
            if n < 0:
                raise ValueError(f"rollback count must be >= 0, got {n}")
            if n and not matcher.rollback(n):
                raise RuntimeError(f"grammar matcher could not roll back {n} tokens: {matcher.get_error()}")

    def is_accepting(self) -> torch.Tensor:
        return torch.tensor([m.is_accepting() and not m.is_error() for m in self.matchers], dtype=torch.bool)
