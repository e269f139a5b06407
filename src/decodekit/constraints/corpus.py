"""Substring constraint: every output is an n-gram of a token corpus, as in SEAL (Bevilacqua
et al., 2022, "Autoregressive Search Engines: Generating Substrings as Document Identifiers").

SEAL constrains with an FM-index; here a suffix array (``pydivsufsort``) does the same job.
The corpus is one int32 text: each document's tokens shifted by +1, documents separated by 0
(so no n-gram crosses a boundary, and a suffix's end sorts like a separator). A row's state is
the suffix-array interval ``[lo, hi)`` of the suffixes that start with its n-gram so far and
the n-gram's length ``depth``; ``hi - lo`` is the n-gram's occurrence count.

- allowed tokens: the distinct tokens at offset ``depth`` of the interval's suffixes (one
  gather over all rows' intervals; the root's set is precomputed);
- advance: the sub-interval whose token at ``depth`` is the chosen one, by a binary search run
  for all rows at once (``ceil(log2(n + 1))`` vectorised iterations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from decodekit.constraints.base import Cursor, Verdict, grow_history, history_rollback
from decodekit.errors import ConfigError, InputError


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: entries can be huge
class CorpusSubstring:
    """Outputs are substrings (n-grams of at least ``min_tokens`` tokens) of ``corpus``: a
    text, a list of documents, or a list of token-id sequences. Text is encoded with the model's
    tokenizer without special tokens, so an output is a run of corpus tokens."""

    corpus: str | Sequence[str] | Sequence[Sequence[int]]
    min_tokens: int = 1
    name = "corpus_substring"

    def compile(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> SuffixArrayIndex:
        if not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ConfigError("min_tokens", self.min_tokens, "an integer >= 1")
        documents = [self.corpus] if isinstance(self.corpus, str) else list(self.corpus)
        if not documents or all(len(d) == 0 for d in documents):
            raise ConfigError("corpus", self.corpus if not documents else "<empty documents>", "a non-empty text or token sequences")
        if all(isinstance(d, str) for d in documents):
            if tokenizer is None:
                raise InputError("corpus: text needs the model's tokenizer; pass token-id sequences or load() one")
            documents = tokenizer(documents, add_special_tokens=False)["input_ids"]
        elif any(isinstance(d, str) for d in documents):
            raise ConfigError("corpus", type(documents[0]).__name__, "all strings or all token-id sequences, not a mix")
        return SuffixArrayIndex([list(map(int, d)) for d in documents], vocab_size, eos_token_ids, self.min_tokens)


class SuffixArrayIndex:
    """The compiled corpus (immutable): ``text`` ``(n,)`` int64 shifted tokens with 0
    separators, ``suffixes`` ``(n,)`` int64 its suffix array."""

    name = "corpus_substring"

    def __init__(self, documents: list[list[int]], vocab_size: int, eos_token_ids: Sequence[int] = (), min_tokens: int = 1):
        from pydivsufsort import divsufsort

        self.vocab_size, self.min_tokens = vocab_size, min_tokens
        pieces = []
        for i, document in enumerate(documents):
            array = np.asarray(document, dtype=np.int64)
            if array.size and (array.min() < 0 or array.max() >= vocab_size):
                raise InputError(f"corpus document {i} has token ids outside [0, {vocab_size})")
            pieces += [array + 1, np.zeros(1, dtype=np.int64)]
        text = np.concatenate(pieces)
        for eos in eos_token_ids:  # EOS ends an output, so it can never be inside one
            text[text == int(eos) + 1] = 0
        self.text = torch.from_numpy(text)
        self.suffixes = torch.from_numpy(divsufsort(text.astype(np.int32)).astype(np.int64))
        self.first = self.text[self.suffixes]  # (n,) each suffix's first token: sorted
        self.length = len(text)
        self.iterations = max(1, math.ceil(math.log2(self.length + 1)))
        self.root_tokens = torch.zeros(vocab_size, dtype=torch.bool)
        present = np.unique(text)
        self.root_tokens[torch.from_numpy(present[present > 0] - 1)] = True

    def cursor(self, rows: int) -> SubstringCursor:
        return SubstringCursor(self, rows)

    def column(self, index: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Shifted token at offset ``depth`` of suffix ``suffixes[index]`` (0 past the end)."""
        position = self.suffixes[index.clamp(0, self.length - 1)] + depth
        return torch.where(position < self.length, self.text[position.clamp_max(self.length - 1)], 0)

    def narrow(self, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor, token: torch.Tensor):
        """``(lo, hi)`` of the suffixes in ``[lo, hi)`` whose token at ``depth`` is ``token``."""
        value = token + 1
        return self._lower_bound(lo, hi, depth, value), self._lower_bound(lo, hi, depth, value + 1)

    def _lower_bound(self, lo, hi, depth, value):
        # within [lo, hi) the column at ``depth`` is sorted: suffixes share their first depth tokens
        for _ in range(self.iterations):
            mid = (lo + hi) // 2
            right = (lo < hi) & (self.column(mid, depth) < value)
            left = (lo < hi) & ~right
            lo, hi = torch.where(right, mid + 1, lo), torch.where(left, mid, hi)
        return lo

    def count(self, token_ids: Sequence[int]) -> int:
        """Occurrences of ``token_ids`` in the corpus (0 if it is not a substring)."""
        lo, hi = torch.zeros(1, dtype=torch.long), torch.full((1,), self.length, dtype=torch.long)
        for depth, token in enumerate(token_ids):
            if not 0 <= int(token) < self.vocab_size:
                return 0
            lo, hi = self.narrow(lo, hi, torch.tensor([depth]), torch.tensor([int(token)]))
        return int(hi - lo)

    def check(self, token_ids: Sequence[int]) -> Verdict:
        occurrences = self.count(token_ids)
        return Verdict(len(token_ids) >= self.min_tokens and occurrences > 0, {"occurrences": occurrences})


class SubstringCursor(Cursor):
    """Per row: the suffix-array interval of its n-gram and the n-gram's length; ``history``
    ``(rows, capacity, 2)`` keeps every earlier interval for rollback."""

    def __init__(self, index: SuffixArrayIndex, rows: int):
        self.index, self.rows = index, rows
        self.lo = torch.zeros(rows, dtype=torch.long)
        self.hi = torch.full((rows,), index.length, dtype=torch.long)
        self.depth = torch.zeros(rows, dtype=torch.long)
        self.history_lo = torch.zeros((rows, 16), dtype=torch.long)
        self.history_hi = torch.full((rows, 16), index.length, dtype=torch.long)
        # the columns allowed() gathered, as sorted keys ``source_row * width + column``, and
        # each row's source row in them (forks remap it): advance() narrows with searchsorted
        self.keys: torch.Tensor | None = None
        self.source = torch.arange(rows)

    def allowed(self, mask: torch.Tensor, remaining: int | None = None) -> None:
        """Tokens that extend each row's n-gram; none when the budget leaves no room for a
        token and the EOS after it."""
        if remaining is not None and remaining < 2:
            return
        index = self.index
        root = self.depth == 0
        if bool(root.any()):
            mask[root.to(mask.device)] = index.root_tokens.to(mask.device)
        size = torch.where(root, 0, self.hi - self.lo)
        total = int(size.sum())
        self.source = torch.arange(self.rows)
        if total == 0:
            self.keys = torch.zeros(0, dtype=torch.long)
            return
        row = torch.repeat_interleave(torch.arange(self.rows), size, output_size=total)
        suffix = torch.arange(total) - (torch.cumsum(size, 0) - size)[row] + self.lo[row]
        column = index.column(suffix, self.depth[row])
        self.keys = row * (index.vocab_size + 2) + column  # sorted: rows in order, columns within
        # separators (0) go to a spare column that is dropped
        spare = torch.zeros((self.rows, index.vocab_size + 1), dtype=torch.bool)
        spare[row, torch.where(column > 0, column - 1, index.vocab_size)] = True
        mask |= spare[:, : mask.shape[1]].to(mask.device)

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        live, tokens = live.cpu(), tokens.cpu()
        if self.keys is None:  # allowed() was not called since the last move: binary search
            lo, hi = self.index.narrow(self.lo, self.hi, self.depth, tokens)
        else:
            # within a row's interval the column is sorted, so the chosen token's sub-interval
            # starts after the entries below it: one searchsorted for every row
            value, index = tokens + 1, self.index
            base = self.source * (index.vocab_size + 2)
            start = torch.searchsorted(self.keys, base)
            lo = self.lo + torch.searchsorted(self.keys, base + value) - start
            hi = self.lo + torch.searchsorted(self.keys, base + value + 1) - start
            root = self.depth == 0
            lo = torch.where(root, torch.searchsorted(index.first, value), lo)
            hi = torch.where(root, torch.searchsorted(index.first, value + 1), hi)
        self.keys = None
        self.lo, self.hi = torch.where(live, lo, self.lo), torch.where(live, hi, self.hi)
        self.depth = self.depth + live
        needed = int(self.depth.max()) + 1
        self.history_lo = grow_history(self.history_lo, needed)
        self.history_hi = grow_history(self.history_hi, needed)
        self.history_lo.scatter_(1, self.depth[:, None], self.lo[:, None])
        self.history_hi.scatter_(1, self.depth[:, None], self.hi[:, None])

    def fork(self, parents: torch.Tensor) -> None:
        parents = parents.cpu()
        for name in ("lo", "hi", "depth", "history_lo", "history_hi", "source"):
            setattr(self, name, getattr(self, name).index_select(0, parents))
        self.rows = int(parents.numel())

    def rollback(self, count: int | torch.Tensor) -> None:
        self.keys = None
        self.depth = history_rollback(self.depth, count)
        self.lo = self.history_lo.gather(1, self.depth[:, None]).squeeze(1)
        self.hi = self.history_hi.gather(1, self.depth[:, None]).squeeze(1)

    def is_accepting(self) -> torch.Tensor:
        return (self.depth >= self.index.min_tokens) & (self.hi > self.lo)

    def occurrences(self) -> torch.Tensor:
        """``(rows,)`` occurrences of each row's n-gram so far."""
        return self.hi - self.lo
