"""A model whose next-token distributions are given by a Python function, for tests.

``next_logprobs(sequence)`` receives a row's whole sequence (prompt + generated, as a tuple)
and returns the next-token log-probabilities (length ``vocab_size``). Rows are tracked as
Python tuples, which is fine for a test double and keeps the semantics obvious.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from decodekit.model.base import DecodeState


def table_model(
    vocab_size: int,
    table: Mapping[tuple[int, ...], Mapping[int, float]],
    default: Mapping[int, float],
    prompt_length: int,
) -> Callable[[tuple[int, ...]], list[float]]:
    """A ``next_logprobs`` function from probabilities keyed by the *generated* prefix.
    Tokens missing from a row's mapping get probability 0 (log-prob -inf)."""

    def next_logprobs(sequence: tuple[int, ...]) -> list[float]:
        probs = table.get(tuple(sequence[prompt_length:]), default)
        return [math.log(probs[i]) if probs.get(i, 0) > 0 else -math.inf for i in range(vocab_size)]

    return next_logprobs


class ScriptedModel:
    """A :class:`~decodekit.model.base.LanguageModel` driven by a scripted function."""

    is_encoder_decoder = False
    decoder_start_token_id = None

    def __init__(
        self,
        vocab_size: int,
        next_logprobs: Callable[[tuple[int, ...]], Sequence[float] | torch.Tensor],
        eos_token_ids: Sequence[int] = (0,),
        pad_token_id: int | None = None,
        max_length: int | None = None,
        can_merge: bool = False,
    ):
        self.vocab_size, self.next_logprobs = vocab_size, next_logprobs
        self.eos_token_ids, self.pad_token_id = tuple(eos_token_ids), pad_token_id
        self.max_length = max_length
        self.can_merge = can_merge  # rows of separate states may share one (see merge)
        self.device = torch.device("cpu")
        self.forward_count = 0
        self.calls: list[int] = []  # rows per forward, for tests of the engine's economy

    def _logits(self, sequences: list[tuple[int, ...]]) -> torch.Tensor:
        self.forward_count += 1
        self.calls.append(len(sequences))
        rows = [torch.as_tensor(self.next_logprobs(s), dtype=torch.float32) for s in sequences]
        return torch.stack(rows)

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> DecodeState:
        sequences = [tuple(p) for p in prompts]
        width = max(len(p) for p in prompts)
        return DecodeState(self._logits(sequences), width, {"sequences": sequences})

    def select(self, state: DecodeState, rows: torch.Tensor) -> None:
        state.extra["sequences"] = [state.extra["sequences"][i] for i in rows.tolist()]
        state.logits = state.logits.index_select(0, rows)

    def fork(self, state: DecodeState, rows: torch.Tensor) -> DecodeState:
        """A new state of rows ``rows`` of ``state`` (which is not changed)."""
        branch = DecodeState(state.logits, state.prompt_length, dict(state.extra))
        self.select(branch, rows)
        return branch

    def merge(self, first: DecodeState, second: DecodeState, at: int | None = None) -> DecodeState:
        """``first``'s rows with ``second``'s inserted before row ``at`` (default: at the end)."""
        a, b = first.extra["sequences"], second.extra["sequences"]
        at = len(a) if at is None else at
        logits = torch.cat([first.logits[:at], second.logits, first.logits[at:]])
        extra = {**first.extra, "sequences": a[:at] + b + a[at:]}
        return DecodeState(logits, min(first.prompt_length, second.prompt_length), extra)

    def insert(self, state: DecodeState, new: DecodeState, rows: torch.Tensor) -> bool:
        """``new``'s rows written over ``state``'s rows ``rows`` (free slots)."""
        sequences = list(state.extra["sequences"])
        for row, sequence in zip(rows.tolist(), new.extra["sequences"]):
            sequences[row] = sequence
        state.extra["sequences"] = sequences
        state.logits = state.logits.index_copy(0, rows, new.logits)
        state.prompt_length = min(state.prompt_length, new.prompt_length)
        return True

    def release(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Nothing to mask: rows are Python tuples."""

    def advance(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        old = state.extra["sequences"]
        order = parents.tolist() if parents is not None else range(len(old))
        state.extra["sequences"] = [old[p] + (t,) for p, t in zip(order, tokens.tolist())]
        state.logits = self._logits(state.extra["sequences"])

    # -- speculation (same contract as HFLanguageModel.verify / keep) ---------------------------

    def verify(self, state: DecodeState, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """``(rows, n)`` block tokens with block-index ``parents`` (-1: the row's sequence) ->
        ``(rows, n, vocab)`` logits after each token's path; one counted forward."""
        self.forward_count += 1
        sequences, out = state.extra["sequences"], []
        for row, (ids, links) in enumerate(zip(tokens.tolist(), parents.tolist())):
            paths: list[tuple[int, ...]] = []
            for token, parent in zip(ids, links):
                paths.append((sequences[row] if parent < 0 else paths[parent]) + (token,))
            out.append(torch.stack([torch.as_tensor(self.next_logprobs(p), dtype=torch.float32) for p in paths]))
        self.calls.append(tokens.numel())
        state.extra["block"] = tokens.tolist()
        return torch.stack(out)

    def keep(self, state: DecodeState, index: torch.Tensor, count: torch.Tensor) -> None:
        """Row ``r`` keeps block tokens ``index[r, :count[r]]`` (a root-to-node path)."""
        block = state.extra.pop("block")
        state.extra["sequences"] = [
            seq + tuple(block[r][i] for i in index[r, :c].tolist())
            for r, (seq, c) in enumerate(zip(state.extra["sequences"], count.tolist()))
        ]

    def compact(self, state: DecodeState) -> None:
        """Nothing to squeeze: rows are Python tuples."""

    def rewind(self, state: DecodeState, count: torch.Tensor) -> None:
        """Forget the last ``count[r]`` tokens of row ``r``."""
        state.extra["sequences"] = [
            seq[: len(seq) - c] for seq, c in zip(state.extra["sequences"], count.tolist())
        ]
