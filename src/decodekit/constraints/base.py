"""The constraint contract: an immutable compiled object plus a cheap cursor over rows.

A :class:`ConstraintSpec` (``JsonSchema``, ``Regex``, ``Grammar``, ``Catalog``,
``CorpusSubstring``) is what a user writes; ``spec.compile(tokenizer, vocab_size)`` turns it
into a :class:`CompiledConstraint`, built once and shared by every call that uses it (a
grammar for one tokenizer, a catalog trie, a corpus suffix array). ``compiled.cursor(rows)``
starts a :class:`Cursor`: the position of each of ``rows`` decoding rows inside the
constraint. Cursors work on whole batches of rows with tensor operations, so the engine never
walks beams in Python (the grammar cursor is the exception llguidance imposes: one matcher per
row, masks filled in parallel by llguidance's executor).

Cursors know nothing of EOS: they report which *content* tokens may come next and whether a
row may stop here (:meth:`Cursor.is_accepting`); the
:class:`~decodekit.constraints.processor.ConstraintProcessor` turns that into the EOS column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

CONSTRAINED_STRATEGIES: set[str] = {"greedy", "sample", "beam", "diverse_beam"}
"""Strategies whose rows only ever move by ``advance(parents, tokens)`` (one token a step), so
a constraint processor can follow them. A strategy that drafts or rewinds (speculation, tree
search) adds its name here once it calls :meth:`Cursor.rollback` for rejected tokens."""


@dataclass(frozen=True)
class Verdict:
    """Whether a finished output satisfies its constraint; ``info`` is what the constraint
    reports about it (e.g. ``{"occurrences": 3}`` for a corpus substring)."""

    valid: bool
    info: dict = field(default_factory=dict)


@runtime_checkable
class Cursor(Protocol):
    """The constraint positions of ``rows`` decoding rows. Every method mutates the cursor
    except :meth:`allowed` and :meth:`is_accepting`."""

    rows: int

    def allowed(self, mask: torch.Tensor, remaining: int | None = None) -> None:
        """Set ``mask[i, v]`` (``(rows, vocab)`` bool, all False on entry) for every content
        token ``v`` row ``i`` may take next. ``remaining``: tokens left before the length limit,
        this one and the EOS included (None: unbounded); a cursor may use it to drop tokens
        after which no output can be completed in time."""
        ...

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        """Consume ``tokens`` (``(rows,)`` int64) in the rows where ``live`` (``(rows,)``
        bool) is True; the caller guarantees those tokens were allowed."""
        ...

    def fork(self, parents: torch.Tensor) -> None:
        """Reorder rows: new row i continues old row ``parents[i]`` (``(rows',)`` int64)."""
        ...

    def rollback(self, count: int | torch.Tensor) -> None:
        """Undo the last ``count`` consumed tokens of every row (an int, or ``(rows,)``)."""
        ...

    def is_accepting(self) -> torch.Tensor:
        """``(rows,)`` bool: rows whose tokens so far form a complete, valid output."""
        ...


class CompiledConstraint(Protocol):
    """An immutable compiled constraint for one tokenizer and vocabulary width."""

    name: str
    vocab_size: int
    """Width of the masks its cursors fill (the model's logits; columns past the tokenizer's
    vocabulary are never allowed)."""

    def cursor(self, rows: int) -> Cursor:
        """``rows`` fresh cursors at the start of the constraint."""
        ...

    def check(self, token_ids: Sequence[int]) -> Verdict:
        """Validate a finished output (its tokens without the final EOS), on the host."""
        ...


class ConstraintSpec(Protocol):
    """What a user writes; compiled (and cached) per tokenizer and vocabulary width."""

    name: str

    def compile(self, tokenizer, vocab_size: int) -> CompiledConstraint: ...


def history_rollback(depth: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """``(rows,)`` depths after undoing ``count`` tokens; never below the start (0)."""
    count = torch.as_tensor(count, dtype=depth.dtype, device=depth.device)
    if bool((count < 0).any()):
        raise ValueError(f"rollback count must be >= 0, got {count.tolist()}")
    return (depth - count).clamp_min(0)


def grow_history(history: torch.Tensor, needed: int) -> torch.Tensor:
    """``(rows, capacity)`` history widened (doubled) until it has ``needed`` columns."""
    capacity = history.shape[1]
    if needed <= capacity:
        return history
    while capacity < needed:
        capacity *= 2
    wider = history.new_zeros((history.shape[0], capacity))
    wider[:, : history.shape[1]] = history
    return wider
