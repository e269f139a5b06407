"""Momentum decoding: greedy decoding that explores new nodes of the generation graph and
returns to visited ones only against a resistance.

Lan, Su, Liu, Huang and Mao (2022), "Momentum Decoding: Open-ended Text Generation As Graph
Exploration". Tokens are the graph's nodes; the sequence so far (prompt included) is the path
explored. Choosing candidate ``v`` after ``x_1..x_T`` re-enters the graph with depth
``d(v)``: 0 if ``v`` never occurred, else the length ``n`` of the longest n-gram
``(x_{T-n+2}, ..., x_T, v)`` that already occurred (1: only ``v`` itself), capped at
``len(resistance) - 1``: the loop choosing ``v`` would walk again. Among the ``k`` most likely
tokens, the decision is

    x_t = argmax_{v in top-k}  p(v | x_<t) - alpha * R(d(v))

on probabilities (the authors' release; R the resistance table, default theirs:
``R = (0, 1, 3, 4, 5, 6)`` for ``d = 0..5``, ``alpha = 0.2``, ``k = 5``). A token new to the
sequence costs nothing; re-entering a long loop costs more the longer it is, so the loops
greedy decoding falls into are left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.search.base import SearchContext
from decodekit.search.sampling import RowSearch


@dataclass(frozen=True)
class MomentumDecoding:
    """``k``: candidates per step (the most likely tokens); ``alpha``: weight of the
    resistance; ``resistance``: ``R(d)`` for loop depths ``d = 0, 1, ...`` (depths beyond the
    table count as its last entry). ``token_logprobs`` are the processed distribution's, as
    greedy's."""

    name: ClassVar[str] = "momentum"
    k: int = 5
    alpha: float = 0.2
    resistance: tuple[float, ...] = (0.0, 1.0, 3.0, 4.0, 5.0, 6.0)

    def validate(self) -> None:
        v.integer("k", self.k, 1, 1 << 16, "candidate tokens per step")
        v.number("alpha", self.alpha, 0.0, 1e6)
        if not isinstance(self.resistance, tuple | list) or not 1 <= len(self.resistance) <= 64:
            raise ConfigError("resistance", self.resistance, "1 to 64 numbers: R(d) for loop depths d = 0, 1, ...")
        for d, value in enumerate(self.resistance):
            v.number(f"resistance[{d}]", value, 0.0, 1e6)
        if self.resistance[0] != 0:
            raise ConfigError("resistance[0]", self.resistance[0], "0: a token new to the sequence meets no resistance")

    def begin(self, context: SearchContext) -> MomentumRun:
        return MomentumRun(self, context)


class MomentumRun(RowSearch):
    """Greedy rows whose choice is momentum's; the sequence so far is kept right-aligned
    (``history[:, :end]``, left padding ``-1``) so every row's last token is in one column."""

    def __init__(self, config: MomentumDecoding, context: SearchContext):
        super().__init__(context, width=1, sampler=None)
        self.config = config
        prefixes = context.prefixes or tuple(() for _ in range(context.batch_size))
        width = max(len(p) for p in prefixes)
        self.history = torch.full((context.batch_size, width + context.max_new_tokens), -1, dtype=torch.long, device=context.device)
        for row, prefix in enumerate(prefixes):
            if prefix:
                self.history[row, width - len(prefix) : width] = torch.tensor(prefix, device=context.device)
        self.end = width  # columns [0, end) hold the sequence so far
        self.table = torch.tensor(config.resistance, dtype=torch.float32, device=context.device)

    def depth(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(rows, k)`` candidate tokens -> ``(rows, k)`` their loop depths ``d``."""
        history, end, deepest = self.history[:, : self.end], self.end, len(self.config.resistance) - 1
        seen = history[:, None, :] == candidates[:, :, None]  # (rows, k, end): v at position j
        depth = seen.any(-1).long()
        context = history >= 0  # positions j whose preceding i tokens equal the last i tokens
        for n in range(2, deepest + 1):
            i = n - 1
            if i >= end:
                break
            last = history[:, end - i]  # the i-th token from the end
            before = torch.full_like(history, -1)
            before[:, i:] = history[:, : end - i]
            context = context & (before == last[:, None]) & (last >= 0)[:, None]
            depth = torch.where((seen & context[:, None, :]).any(-1), n, depth)
        return depth.clamp(max=deepest)

    def _choose(self, scores: torch.Tensor, t: int) -> torch.Tensor:
        k = min(self.config.k, scores.shape[-1])
        top, candidates = torch.topk(scores, k, dim=-1)
        probs = scores.softmax(-1).gather(1, candidates)
        value = probs - self.config.alpha * self.table[self.depth(candidates)]
        value = value.masked_fill(~torch.isfinite(top), float("-inf"))  # never a ruled-out token
        return candidates.gather(1, value.argmax(-1, keepdim=True)).squeeze(1)

    def step(self, scores: torch.Tensor, t: int):
        step = super().step(scores, t)
        self.history[:, self.end] = torch.where(self.finished & (step.tokens == self.context.pad_token_id), -1, step.tokens)
        self.end += 1
        return step
