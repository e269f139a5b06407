"""n-gram prompt lookup: draft what followed the most recent earlier occurrence of the
context's last n tokens (Saxena, 2023, "Prompt Lookup Decoding"; the idea of copying spans
from the input is also in Yang et al., 2023, "Inference with Reference").

Each row keeps, per ``n``, a dictionary from an n-gram to the position right after its most
recent occurrence that has a continuation, updated as tokens arrive, so a proposal costs
``max_ngram - min_ngram + 1`` dictionary look-ups whatever the context length.
"""

from __future__ import annotations

import torch

from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp, chain_parents
from decodekit.speculative.config import PromptLookupConfig


def _copy(sequence: list[int], start: int, count: int) -> list[int]:
    """``count`` tokens copied from ``sequence[start:]``, running on into the copy itself when
    the source reaches the end (an LZ77-style overlapping copy: a most recent occurrence that
    overlaps the end, as in a repeated span, still yields a full-length draft)."""
    copied = sequence[start : start + count]
    period = len(sequence) - start
    while len(copied) < count:
        copied.append(copied[len(copied) - period])
    return copied


class PromptLookupProposer:
    """Chain drafts copied from the row's own context (see module docstring)."""

    name = "ngram"
    joins = True  # rows may join and leave a running call (continuous batching)

    def __init__(self, config: PromptLookupConfig):
        self.config = config
        self._index: dict[int, list[dict[tuple[int, ...], int]]] = {}
        self._indexed: dict[int, int] = {}  # row -> tokens whose n-grams are indexed

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        self._index, self._indexed = {}, {}
        self.join(list(range(len(prompts))), prompts, generators)

    def join(self, rows: list[int], prompts: list[list[int]], generators: tuple[torch.Generator | None, ...] = ()) -> None:
        sizes = range(self.config.min_ngram, self.config.max_ngram + 1)
        for row in rows:
            self._index[row] = [{} for _ in sizes]
            self._indexed[row] = 0

    def leave(self, rows: list[int], outputs: list[list[int]]) -> None:
        for row in rows:
            self._index.pop(row, None)
            self._indexed.pop(row, None)

    def _catch_up(self, row: int, sequence: list[int]) -> None:
        """Index every n-gram that now has a continuation (ends before the last token)."""
        low = self.config.min_ngram
        tables = self._index[row]
        for end in range(max(self._indexed[row], 1), len(sequence)):
            # the n-gram sequence[end - n : end] is followed by sequence[end]
            for offset, table in enumerate(tables):
                n = low + offset
                if end >= n:
                    table[tuple(sequence[end - n : end])] = end
        self._indexed[row] = len(sequence)

    def propose(self, context: SpeculationContext) -> Draft:
        tokens, parents = [], []
        low = self.config.min_ngram
        for row, sequence, limit in zip(context.rows, context.sequences, context.limits):
            self._catch_up(row, sequence)
            draft: list[int] = []
            budget = min(self.config.num_tokens, limit)
            tables = self._index[row]
            for offset in range(len(tables) - 1, -1, -1):
                n = low + offset
                if budget <= 0 or len(sequence) < n:
                    continue
                start = tables[offset].get(tuple(sequence[-n:]))
                if start is not None:
                    draft = _copy(sequence, start, budget)
                    break
            tokens.append(draft)
            parents.append(chain_parents(len(draft)))
        return Draft.from_lists(tokens, parents)

    def observe(self, verification: Verification) -> None:
        pass  # the context itself is the only state; it is indexed lazily in propose

    def finish(self, outputs: list[list[int]]) -> None:
        self._index, self._indexed = {}, {}
