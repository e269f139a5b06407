"""Processors that read the prompt (the encoder input of an encoder-decoder model, the prompt
part of a decoder-only row): transformers' ``encoder_repetition_penalty`` and
``encoder_no_repeat_ngram_size``. ``encoder_ids``: ``(rows, P)`` int64, ``-1`` padded; None
for a decoder-only model, whose prompt is the first ``prompt_length`` columns of the history."""

from __future__ import annotations

import torch

from decodekit.logits.base import present_tokens
from decodekit.logits.penalties import ban_completions

NEG_INF = float("-inf")


def _prompt(token_ids: torch.Tensor, encoder_ids: torch.Tensor | None, prompt_length: int) -> torch.Tensor:
    if encoder_ids is None:
        return token_ids[:, :prompt_length]
    return encoder_ids.to(token_ids.device)


class EncoderRepetitionPenalty:
    """The inverse of the repetition penalty, over the prompt's tokens: a prompt token's score
    is multiplied by ``penalty`` if positive, divided by it if negative (``penalty > 1``
    favours copying from the prompt)."""

    changes_argmax = True

    def __init__(self, penalty: float, prompt_length: int, encoder_ids: torch.Tensor | None = None):
        self.penalty, self.prompt_length, self.encoder_ids = float(penalty), prompt_length, encoder_ids

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = present_tokens(_prompt(token_ids, self.encoder_ids, self.prompt_length), scores.shape[-1])
        favoured = torch.where(scores < 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen, favoured, scores)


class EncoderNoRepeatNGram:
    """Ban any token that would complete an n-gram of the prompt: the row's last ``n - 1``
    tokens followed by the token occur in the prompt."""

    changes_argmax = True

    def __init__(self, size: int, prompt_length: int, encoder_ids: torch.Tensor | None = None):
        self.size, self.prompt_length, self.encoder_ids = int(size), prompt_length, encoder_ids

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.size
        prompt = _prompt(token_ids, self.encoder_ids, self.prompt_length)
        if n == 1:
            return scores.masked_fill(present_tokens(prompt, scores.shape[-1]), NEG_INF)
        if token_ids.shape[1] < n - 1 or prompt.shape[1] < n:
            return scores
        return ban_completions(prompt.unfold(1, n, 1), token_ids[:, token_ids.shape[1] - n + 1 :], scores)
