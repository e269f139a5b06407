"""Processors: plain callables ``(token_ids, scores) -> scores``.

``token_ids`` is ``(rows, length)`` int64: each row's prompt (decoder-only) or decoder start
token (encoder-decoder) followed by the tokens generated so far; padding is ``-1`` and must be
ignored. ``scores`` is ``(rows, vocab)`` float32 (logits for greedy/sampling, log-probs for
beam search, as transformers does); a processor may modify it in place and returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


class Processor(Protocol):
    changes_argmax: bool
    """False when the processor can never change which token has the highest score, so greedy
    decoding may skip it (e.g. temperature)."""

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StatefulProcessor(Processor, Protocol):
    """A processor that tracks each row (e.g. a constraint cursor). After every step the engine
    calls ``advance(parents, tokens)``: new row i continues old row ``parents[i]`` (identity if
    None) with ``tokens[i]``. ``reset(rows)`` is called once before the first step with the
    number of rows (after fan-out)."""

    def reset(self, rows: int) -> None: ...

    def advance(self, parents: torch.Tensor | None, tokens: torch.Tensor) -> None: ...


def present_tokens(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(rows, vocab)`` bool: which tokens occur in each row (padding ``-1`` ignored)."""
    rows = token_ids.shape[0]
    # Padding goes to an extra column that is dropped, so no per-row Python is needed.
    index = torch.where(token_ids < 0, vocab_size, token_ids)
    seen = torch.zeros((rows, vocab_size + 1), dtype=torch.bool, device=token_ids.device)
    seen.scatter_(1, index, True)
    return seen[:, :vocab_size]


class ProcessorList:
    """Apply processors in order; ``for_greedy`` drops those that cannot change the argmax."""

    def __init__(self, processors: Sequence[Processor] = ()):
        self.processors = list(processors)

    @property
    def changes_argmax(self) -> bool:
        return any(p.changes_argmax for p in self.processors)

    def for_greedy(self) -> ProcessorList:
        return ProcessorList([p for p in self.processors if p.changes_argmax])

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self.processors:
            scores = processor(token_ids, scores)
        return scores

    def __len__(self) -> int:
        return len(self.processors)

    @property
    def stateful(self) -> list[StatefulProcessor]:
        return [p for p in self.processors if isinstance(p, StatefulProcessor)]
