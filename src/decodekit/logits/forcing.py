"""Processors that force or forbid tokens at given positions, with transformers' semantics:
forced first tokens (``forced_bos_token_id``, a decoder prefix), forced EOS at the length
limit, tokens suppressed at the first step, prompt-inclusive minimum length, exponentially
growing EOS odds, and renormalisation. A row's position is counted from its own tokens
(padding ``-1`` excluded), so padding never shifts it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def _lengths(token_ids: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` each row's history length without padding."""
    return (token_ids >= 0).sum(1)


class ForceTokens:
    """Generated token ``t`` must be ``tokens[t]`` for ``t < len(tokens)``: every other score
    becomes ``-inf`` and the forced one 0 (transformers' ``ForcedBOSTokenLogitsProcessor``
    is the one-token case; ``only_at_length``: force only rows whose history is that long, as
    transformers does for ``forced_bos_token_id``: a decoder start token, or a one-token
    prompt)."""

    changes_argmax = True

    def __init__(self, tokens: Sequence[int], prompt_length: int, only_at_length: int | None = None):
        self.tokens, self.start, self.only = list(tokens), prompt_length, only_at_length

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = token_ids.shape[1] - self.start
        if t >= len(self.tokens):
            return scores
        rows = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        if self.only is not None:
            rows = _lengths(token_ids) == self.only
        forced = torch.full_like(scores, NEG_INF)
        forced[:, self.tokens[t]] = 0.0
        return torch.where(rows[:, None], forced, scores)


class ForceEOS:
    """At the last allowed step only EOS may be emitted: every listed EOS id scores 0, the
    rest ``-inf`` (transformers' ``ForcedEOSTokenLogitsProcessor``)."""

    changes_argmax = True

    def __init__(self, max_new_tokens: int, prompt_length: int, eos_token_ids: Sequence[int]):
        self.last = prompt_length + max_new_tokens - 1
        self.eos = list(eos_token_ids)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if token_ids.shape[1] == self.last:
            scores = torch.full_like(scores, NEG_INF)
            scores[:, self.eos] = 0.0
        return scores


class BeginSuppress:
    """These tokens may not be generated at step ``at_step`` (0: the first generated token;
    1 when a forced BOS takes the first), as transformers' ``begin_suppress_tokens``."""

    changes_argmax = True

    def __init__(self, tokens: Sequence[int], vocab_size: int, at_step: int, prompt_length: int):
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[list(tokens)] = True
        self.at, self.start = at_step, prompt_length

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if token_ids.shape[1] - self.start != self.at:
            return scores
        return scores.masked_fill(self.mask.to(scores.device), NEG_INF)


class MinLength:
    """EOS is banned while a row's whole sequence (prompt, or decoder start token, plus the
    generated tokens) is shorter than ``min_length`` (transformers' ``min_length``)."""

    changes_argmax = True

    def __init__(self, min_length: int, eos_token_ids: Sequence[int]):
        self.min_length, self.eos = int(min_length), list(eos_token_ids)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        short = _lengths(token_ids) < self.min_length  # no host sync: every row, every step
        scores = scores.clone()
        scores[:, self.eos] = torch.where(short[:, None], NEG_INF, scores[:, self.eos])
        return scores


class ExponentialDecayLength:
    """After ``start`` generated tokens, EOS's score grows by ``|score| * (factor ** k - 1)``
    at the k-th further step (transformers' ``exponential_decay_length_penalty``)."""

    changes_argmax = True

    def __init__(self, start: int, factor: float, prompt_length: int, eos_token_ids: Sequence[int]):
        self.begin = prompt_length + int(start)
        self.factor, self.eos = float(factor), list(eos_token_ids)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = token_ids.shape[1] - self.begin
        if k <= 0:
            return scores
        eos = scores[:, self.eos]
        penalty = (eos.abs() * (self.factor**k - 1)).masked_fill(~torch.isfinite(eos), 0.0)
        scores = scores.clone()
        scores[:, self.eos] = eos + penalty
        return scores


class Renormalize:
    """Log-softmax the processed scores (transformers' ``renormalize_logits``), last."""

    changes_argmax = False

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.log_softmax(-1)
