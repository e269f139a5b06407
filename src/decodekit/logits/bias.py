"""Additive biases and penalties: OpenAI's ``logit_bias``, transformers' ``sequence_bias``,
OpenAI/vLLM's presence and frequency penalties, and DRY (sequence repetition). Vectorised over
rows; padding (``-1``) is ignored, so a row's result does not depend on its neighbours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class LogitBias:
    """Add ``bias[token]`` to that token's logit at every step (OpenAI's ``logit_bias``)."""

    changes_argmax = True

    def __init__(self, bias: Mapping[int, float], vocab_size: int):
        self.vector = torch.zeros(vocab_size)
        for token, value in bias.items():
            self.vector[int(token)] = float(value)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.vector.device != scores.device:
            self.vector = self.vector.to(scores.device)
        return scores + self.vector


class SequenceBias:
    """transformers' ``sequence_bias``: a bias per token sequence, added to the sequence's last
    token when the row ends with the rest of it (a one-token sequence: always). Sequences with
    the same prefix length are matched in one comparison."""

    changes_argmax = True

    def __init__(self, biases: Mapping[tuple[int, ...], float], vocab_size: int):
        self.single = torch.zeros(vocab_size)
        by_length: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for sequence, value in biases.items():
            if len(sequence) == 1:
                self.single[sequence[0]] += float(value)
            else:
                by_length.setdefault(len(sequence) - 1, []).append((tuple(sequence), float(value)))
        self.groups = [
            (
                torch.tensor([s[:-1] for s, _ in group], dtype=torch.long),
                torch.tensor([s[-1] for s, _ in group], dtype=torch.long),
                torch.tensor([b for _, b in group]),
            )
            for group in by_length.values()
        ]

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        device = scores.device
        bias = self.single.to(device).expand_as(scores).clone()
        for prefixes, last, values in self.groups:
            n = prefixes.shape[1]
            if n > token_ids.shape[1]:
                continue
            hit = (token_ids[:, None, -n:] == prefixes.to(device)).all(-1)  # (rows, sequences)
            bias.index_add_(1, last.to(device), torch.where(hit, values.to(device), 0.0))
        return scores + bias


class PresenceFrequencyPenalty:
    """OpenAI's and vLLM's penalties on the generated tokens (not the prompt): a token's logit
    is lowered by ``presence`` if it was generated at all, and by ``frequency`` times the
    number of times it was generated."""

    changes_argmax = True

    def __init__(self, presence: float, frequency: float, prompt_length: int):
        self.presence, self.frequency, self.start = float(presence), float(frequency), prompt_length

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = token_ids[:, self.start :]
        if generated.shape[1] == 0:
            return scores
        vocab = scores.shape[-1]
        index = torch.where(generated < 0, vocab, generated)
        counts = torch.zeros((scores.shape[0], vocab + 1), device=scores.device)
        counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
        counts = counts[:, :vocab]
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class DRY:
    """DRY, "Don't Repeat Yourself" (p-e-w, the sampler of text-generation-webui and llama.cpp):
    a token that would extend a repetition of an earlier sequence is penalised by
    ``multiplier * base ** (n - allowed_length)``, where ``n`` is the length of the longest
    suffix of the row that occurred earlier followed by that token, for ``n >= allowed_length``.
    A match never extends across a sequence-breaker token. ``last_n``: only the last ``last_n``
    tokens of the history take part (0: all of them). Matches are computed for all rows and
    positions at once, one tensor comparison per match length."""

    changes_argmax = True
    MAX_MATCH = 64
    """Matches longer than this count as this long (the penalty is enormous long before)."""

    def __init__(self, multiplier: float, base: float, allowed_length: int, breakers: Sequence[int], last_n: int = 0):
        self.multiplier, self.base, self.allowed = float(multiplier), float(base), int(allowed_length)
        self.breakers = torch.tensor(sorted(set(breakers)), dtype=torch.long)
        self.last_n = int(last_n)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ids = token_ids[:, -self.last_n :] if self.last_n else token_ids
        rows, length = ids.shape
        if length < 2:
            return scores
        breaker = torch.isin(ids, self.breakers.to(ids.device)) | (ids < 0)
        # candidate j (1 <= j < length): the earlier occurrence ending at j - 1, followed by ids[j]
        run = torch.ones((rows, length - 1), dtype=torch.bool, device=ids.device)
        match = torch.zeros((rows, length - 1), dtype=torch.long, device=ids.device)
        positions = torch.arange(1, length, device=ids.device)
        for i in range(min(self.MAX_MATCH, length - 1)):
            earlier = positions - 1 - i  # compares ids[earlier] with ids[length - 1 - i]
            valid = earlier >= 0
            left = ids[:, earlier.clamp(min=0)]
            right = ids[:, length - 1 - i : length - i]
            same = (left == right) & ~breaker[:, length - 1 - i : length - i] & ~breaker[:, earlier.clamp(min=0)] & valid
            run &= same
            if not bool(run.any()):
                break
            match += run
        followers = ids[:, 1:]
        penalised = (match >= self.allowed) & (followers >= 0)
        if not bool(penalised.any()):
            return scores
        vocab = scores.shape[-1]
        target = torch.where(penalised, followers, vocab)
        longest = torch.zeros((rows, vocab + 1), dtype=torch.long, device=ids.device)
        longest.scatter_reduce_(1, target, torch.where(penalised, match, 0), reduce="amax")
        longest = longest[:, :vocab]
        hit = longest >= self.allowed
        penalty = self.multiplier * torch.pow(self.base, (longest - self.allowed).to(scores.dtype))
        return scores - torch.where(hit, penalty, 0.0)
