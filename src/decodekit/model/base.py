"""The contract between the engine and a model.

A :class:`LanguageModel` prefills a batch of prompts once and then advances rows: after
``advance(state, parents, tokens)`` new row ``i`` is old row ``parents[i]`` extended by
``tokens[i]``. Beam reordering, beam expansion and sample fan-out are all expressed this way,
so a prompt's cache is shared by its beams and never prefilled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class DecodeState:
    """What a model keeps between calls for one batch of rows. Mutated by the model only.

    ``logits``: ``(rows, vocab)`` float32 next-token logits of every row.
    ``prompt_length``: padded prompt length (decoder-only) or decoder start length; positions
    ``[0, prompt_length)`` of the cache are identical for all rows of one prompt.
    ``extra``: the model's own bookkeeping (cache, masks, encoder outputs).
    """

    logits: torch.Tensor
    prompt_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.logits.shape[0]


@runtime_checkable
class LanguageModel(Protocol):
    """A next-token model the engine can drive."""

    vocab_size: int
    """Width of the logits (may exceed the tokenizer's vocabulary: padded embeddings)."""
    max_length: int | None
    """Longest sequence (prompt + new tokens) the model can attend over, or None if unbounded."""
    is_encoder_decoder: bool
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> DecodeState:
        """Prefill every prompt once; ``state.logits`` holds each prompt's next-token logits."""
        ...

    def select(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Reindex rows without adding a token: new row i = old row ``rows[i]`` (fan-out)."""
        ...

    def advance(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """New row i = old row ``parents[i]`` (identity if None) extended by ``tokens[i]``.

        ``parents`` must keep each row within its prompt. Updates ``state.logits``. A model
        whose ``skips_idle_rows`` is true also takes ``idle=`` rows whose logits nobody reads
        (it may skip their arithmetic; their logits stay finite).
        """
        ...


def tree_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """``(rows, n)`` block-index parents (``-1``: the token continues the row's cache; parents
    precede children) -> ``(rows, n, n)`` bool, ``[r, i, j]`` true when token ``j`` is token
    ``i`` or one of its ancestors. A token's depth in its tree is ``ancestors.sum(-1) - 1``."""
    rows, n = parents.shape
    # Chain drafts, the common case, need no products. The check reads the tensor, so only on
    # the CPU, where that costs no device sync.
    chain = torch.arange(-1, n - 1, device=parents.device)
    if parents.device.type == "cpu" and torch.equal(parents, chain.expand(rows, n)):
        return torch.ones(n, n, dtype=torch.bool, device=parents.device).tril().expand(rows, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=parents.device).expand(rows, n, n)
    parent_of = torch.zeros((rows, n, n + 1), dtype=torch.float32, device=parents.device)
    parent_of.scatter_(2, torch.where(parents >= 0, parents, n)[:, :, None], 1.0)
    reach = (eye | parent_of[:, :, :n].bool()).float()  # paths of length <= 1
    # Subtle: squaring doubles the path length covered; no host sync, log2(n) matmuls.
    for _ in range(max(0, (n - 1).bit_length())):
        reach = (reach @ reach).clamp_(max=1.0)
    return reach.bool()
