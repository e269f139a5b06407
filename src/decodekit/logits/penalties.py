"""Processors usable with every strategy: repetition penalty, no-repeat n-gram, suppressed and
bad-word tokens, minimum new tokens. All are vectorised over
rows; none loops over rows in Python."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decodekit.logits.base import present_tokens

NEG_INF = float("-inf")


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al., 2019, sec. 4.1): a token already in the row
    has its score divided by ``penalty`` if positive, multiplied by it if negative."""

    changes_argmax = True

    def __init__(self, penalty: float):
        self.penalty = float(penalty)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = present_tokens(token_ids, scores.shape[-1])
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class NoRepeatNGram:
    """Ban any token that would complete an n-gram already present in the row
    (Paulus et al., 2017). Windows are compared as tensors: ``(rows, windows, n)``."""

    changes_argmax = True

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n, length = self.size, token_ids.shape[1]
        if length < n:
            return scores
        windows = token_ids.unfold(1, n, 1)  # (rows, length - n + 1, n)
        if n == 1:
            banned = present_tokens(token_ids, scores.shape[-1])
            return scores.masked_fill(banned, NEG_INF)
        return ban_completions(windows, token_ids[:, length - n + 1 :], scores)


def ban_completions(windows: torch.Tensor, tail: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Ban every token that follows ``tail`` (``(rows, n - 1)``, the n-gram being completed)
    in one of the row's ``windows`` (``(rows, W, n)``; windows holding padding never match)."""
    n = windows.shape[-1]
    match = (windows[:, :, : n - 1] == tail[:, None, :]).all(-1) & (windows >= 0).all(-1)
    vocab = scores.shape[-1]
    following = torch.where(match, windows[:, :, n - 1], vocab)
    banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
    banned.scatter_(1, following, True)
    return scores.masked_fill(banned[:, :vocab], NEG_INF)


class SuppressTokens:
    """Never emit these tokens."""

    changes_argmax = True

    def __init__(self, token_ids: Sequence[int], vocab_size: int):
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[list(token_ids)] = True

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.mask.device != scores.device:
            self.mask = self.mask.to(scores.device)
        return scores.masked_fill(self.mask, NEG_INF)


class BadWords:
    """Never emit these token sequences: the last token of a sequence is banned when the row
    ends with the rest of it. Single-token sequences are always banned."""

    changes_argmax = True

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int):
        single = [s[0] for s in sequences if len(s) == 1]
        self.always = SuppressTokens(single, vocab_size) if single else None
        self.multi = [torch.tensor(s, dtype=torch.long) for s in sequences if len(s) > 1]

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.always is not None:
            scores = self.always(token_ids, scores)
        for sequence in self.multi:  # one vectorised test per bad word, over all rows
            prefix = sequence[:-1].to(token_ids.device)
            if token_ids.shape[1] < len(prefix):
                continue
            hit = (token_ids[:, token_ids.shape[1] - len(prefix) :] == prefix).all(-1)
            scores[hit, int(sequence[-1])] = NEG_INF
        return scores


class MinNewTokens:
    """EOS is not allowed before ``min_new_tokens`` tokens were generated."""

    changes_argmax = True

    def __init__(self, min_new_tokens: int, prompt_length: int, eos_token_ids: Sequence[int]):
        self.min_new_tokens, self.prompt_length = min_new_tokens, prompt_length
        self.eos = list(eos_token_ids)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if token_ids.shape[1] - self.prompt_length < self.min_new_tokens:
            scores[:, self.eos] = NEG_INF
        return scores
