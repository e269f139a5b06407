"""Constrained decoding: outputs that obey a JSON Schema, a regex, a Lark grammar, a catalog of
entries, or that are substrings of a corpus.

>>> decoder.generate("id: ", decodekit.BeamSearch(num_beams=8, num_return_sequences=3),
...                  constraint=Catalog(["alpha", "beta", "gamma"]))

A spec compiles (once, cached) into an immutable constraint; a
:class:`~decodekit.constraints.processor.ConstraintProcessor` masks every step's scores with it
and follows the rows through beam reorders. Finished outputs are re-checked, and any that does
not satisfy the constraint is reported with finish reason ``constraint``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from decodekit.constraints.base import (
    CONSTRAINED_STRATEGIES,
    CompiledConstraint,
    ConstraintSpec,
    Cursor,
    Verdict,
)
from decodekit.constraints.catalog import Catalog, CatalogTrie
from decodekit.constraints.corpus import CorpusSubstring, SuffixArrayIndex
from decodekit.constraints.grammar import CompiledGrammar, Grammar, JsonSchema, Regex
from decodekit.constraints.processor import ConstraintProcessor
from decodekit.errors import ConfigError, DecodeKitError

SPECS = (JsonSchema, Regex, Grammar, Catalog, CorpusSubstring)
COMPILED = (CompiledGrammar, CatalogTrie, SuffixArrayIndex)

_compiled: OrderedDict[tuple, tuple[object, CompiledConstraint]] = OrderedDict()
_lock = threading.Lock()


def compile_constraint(spec, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...] = ()) -> CompiledConstraint:
    """``spec`` compiled for ``tokenizer`` and logits of width ``vocab_size``; a compiled
    constraint passes through. Catalogs and corpora are cached per spec object (grammars per
    grammar text, in :mod:`~decodekit.constraints.grammar`)."""
    if isinstance(spec, COMPILED):
        if spec.vocab_size != vocab_size:
            raise ConfigError("constraint", type(spec).__name__, f"compiled for logits of width {vocab_size}, not {spec.vocab_size}")
        return spec
    if not isinstance(spec, SPECS):
        names = ", ".join(cls.__name__ for cls in SPECS)
        raise ConfigError("constraint", spec, f"one of {names} (or a compiled constraint)")
    if isinstance(spec, JsonSchema | Regex | Grammar):
        return _compiling(spec, lambda: spec.compile(tokenizer, vocab_size, eos_token_ids))
    key = (id(spec), id(tokenizer), vocab_size, tuple(eos_token_ids))
    with _lock:
        hit = _compiled.get(key)
        if hit is not None and hit[0] is spec:
            return hit[1]
    compiled = _compiling(spec, lambda: spec.compile(tokenizer, vocab_size, eos_token_ids))
    with _lock:
        _compiled[key] = (spec, compiled)  # holds the spec so its id stays unique
        while len(_compiled) > 8:
            _compiled.popitem(last=False)
    return compiled


def _compiling(spec, compile_):
    """Run a spec's compilation; a raw error from a malformed spec becomes a ConfigError."""
    try:
        return compile_()
    except DecodeKitError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        raise ConfigError("constraint", getattr(spec, "name", type(spec).__name__), f"a valid {type(spec).__name__}: {type(error).__name__}: {str(error)[:200]}") from None


def constraint_processor(
    spec,
    strategy_name: str,
    tokenizer,
    vocab_size: int,
    eos_token_ids: tuple[int, ...],
    max_new_tokens: int | None,
    min_new_tokens: int = 0,
) -> ConstraintProcessor:
    """The processor enforcing ``spec`` under strategy ``strategy_name``; every error (an
    unsupported strategy, no EOS, a bad spec) is raised here, before any model call."""
    if strategy_name not in CONSTRAINED_STRATEGIES:
        raise ConfigError("constraint", getattr(spec, "name", spec), f"works with the strategies {', '.join(sorted(CONSTRAINED_STRATEGIES))}, not {strategy_name!r}")
    if not eos_token_ids:
        raise ConfigError("eos_token_ids", eos_token_ids, "at least one EOS token: a constrained output ends with EOS once complete")
    compiled = compile_constraint(spec, tokenizer, vocab_size, tuple(eos_token_ids))
    try:
        return ConstraintProcessor(compiled, tuple(eos_token_ids), max_new_tokens, min_new_tokens)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError("constraint", getattr(spec, "name", spec), f"a valid constraint: {error}") from None


__all__ = [
    "CONSTRAINED_STRATEGIES",
    "Catalog",
    "CatalogTrie",
    "CompiledConstraint",
    "CompiledGrammar",
    "ConstraintProcessor",
    "ConstraintSpec",
    "CorpusSubstring",
    "Cursor",
    "Grammar",
    "JsonSchema",
    "Regex",
    "SuffixArrayIndex",
    "Verdict",
    "compile_constraint",
    "constraint_processor",
]
