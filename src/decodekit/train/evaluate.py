"""Held-out per-token cross-entropy, computed one deterministic way everywhere.

Each file is encoded as ``<bos> text <eos>``, optionally cut to its first
``max_tokens`` tokens, and scored in windows of ``window`` tokens that overlap
by one token, so every token after the first is predicted exactly once with up
to ``window - 1`` tokens of context. The result is the mean over all predicted
tokens (nats) and its exponential (perplexity). Batch size 1, float32,
summed in float64: the number does not depend on what else is evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from decodekit.train.tokenizer import encode_file

EVALUATION_WINDOW = 1024
# The fixed subset the model card and the integration test share: every
# validation file, cut to its first SUBSET_MAX_TOKENS tokens.
SUBSET_MAX_TOKENS = 512


@dataclass(frozen=True)
class HeldOutLoss:
    nats_per_token: float
    perplexity: float
    tokens: int
    files: int


@torch.no_grad()
def held_out_loss(
    model,
    tokenizer,
    texts: list[str],
    window: int = EVALUATION_WINDOW,
    max_tokens: int | None = None,
) -> HeldOutLoss:
    """Mean next-token cross-entropy of ``model`` over ``texts``; model is not changed."""
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    for text in texts:
        ids = encode_file(tokenizer, text)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        start = 0
        while start < len(ids) - 1:
            piece = torch.tensor([ids[start : start + window]])  # (1, W)
            logits = model(input_ids=piece).logits[0, :-1].float()  # (W - 1, V)
            targets = piece[0, 1:]
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            total += float(loss.double())
            count += targets.numel()
            start += window - 1
    model.train(was_training)
    nats = total / max(count, 1)
    return HeldOutLoss(nats, math.exp(nats), count, len(texts))


def subset_paths(validation: list[str]) -> list[str]:
    """The files of the fixed subset (all validation paths, sorted)."""
    return sorted(validation)
