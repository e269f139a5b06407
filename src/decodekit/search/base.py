"""The strategy contract: a strategy decides, the engine drives the model.

A :class:`Strategy` is a small frozen config object. ``strategy.begin(context)`` returns a
:class:`Search`, the mutable per-call state; the engine calls ``search.step(scores, t)`` once
per model forward and gets back a typed :class:`Step`. A search never calls the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Step:
    """One decoding decision for every live row.

    ``parents``: ``(rows,)`` int64, new row i continues old row ``parents[i]``; ``None`` means
    row i continues row i (greedy, sampling). ``tokens``: ``(rows,)`` int64 appended tokens.
    ``done``: ``()`` bool tensor, True when no row needs another token.
    """

    parents: torch.Tensor | None
    tokens: torch.Tensor
    done: torch.Tensor


@dataclass(frozen=True)
class Hypothesis:
    """One finished output of a search (host data, built once at the end)."""

    token_ids: list[int]
    token_logprobs: list[float]
    logprob: float
    score: float
    finish_reason: str
    group: int = 0
    group_score: float | None = None
    top_logprobs: list[tuple[list[int], list[float]]] | None = None
    """Per generated token: the ids and log-probs of the ``top_logprobs`` most likely tokens
    of the distribution the strategy scored; None unless asked for."""
    inclusion: float | None = None
    """Stochastic beam search: the probability that this sequence is in a sample like this one
    (for unbiased estimates); None for other strategies."""


@dataclass(frozen=True)
class SearchContext:
    """What a search needs to know about the call (all tensors on the model's device)."""

    batch_size: int
    max_new_tokens: int
    eos_token_ids: torch.Tensor  # (n_eos,) int64, may be empty
    pad_token_id: int
    device: torch.device
    generators: tuple[torch.Generator | None, ...] = ()
    """One generator per prompt (empty: unseeded). A prompt's random draws come from its own
    generator only, so its output does not depend on the other prompts of the batch."""
    input_embeddings: torch.Tensor | None = None
    vocab_size: int = 0
    """Width of the scores (0: unknown)."""
    top_logprobs: int = 0
    """Record the N most likely tokens of every step (0: no)."""
    stop_check: object = None
    """Stop strings: ``(rows, t)`` generated ids -> ``(rows,)`` bool, for searches that end
    candidates themselves (beam search); per-row searches are stopped by the engine."""

    prompt_lengths: tuple[int, ...] = ()
    """Each prompt's length in tokens (padding excluded)."""
    prompts: tuple[tuple[int, ...], ...] = ()
    """Each prompt's token ids (the encoder's input for an encoder-decoder model)."""
    decode: object = None
    """``ids -> text`` (the decoder's tokenizer), or None when there is no tokenizer."""
    output_head: object = None
    """The model's output layer, ``(..., dim)`` hidden states -> logits (None: not exposed)."""
    tied_embeddings: bool = False
    """Whether that layer shares the input embeddings' weights."""
    prefixes: tuple[tuple[int, ...], ...] = ()
    """Each prompt's decoder-side prefix: the prompt (decoder-only) or the decoder start token
    (encoder-decoder), for searches that read the whole sequence (momentum decoding)."""

    def generator(self, prompt: int) -> torch.Generator | None:
        return self.generators[prompt] if self.generators else None


class TopTokens:
    """The ``n`` most likely tokens of each step, per row: ``values``/``ids`` are
    ``(*rows, steps, n)`` and are reindexed with the rows they belong to."""

    def __init__(self, n: int, shape: tuple[int, ...], steps: int, device):
        self.n = n
        self.values = torch.zeros((*shape, steps, n), device=device)
        self.ids = torch.zeros((*shape, steps, n), dtype=torch.long, device=device)

    @staticmethod
    def host(values: list, ids: list, length: int) -> list[tuple[list[int], list[float]]]:
        """One row's first ``length`` steps as host data."""
        return [(ids[t], values[t]) for t in range(length)]


def normaliser(scores: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` processed log-probs -> ``(...)`` their log-sum-exp (0 for a row with no
    possible token): subtracting it gives the processed distribution's own log-probs, what
    every strategy reports as ``token_logprobs`` (beam searches rank by transformers' beam
    scores, which are not renormalised after the processors)."""
    total = torch.logsumexp(scores, -1)
    return torch.where(torch.isfinite(total), total, torch.zeros_like(total))


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(rows, V)`` probabilities (unnormalised is fine), ``(rows,)`` U[0, 1) -> ``(rows,)``
    tokens drawn by inverting each row's CDF; never a zero-probability token (the first index
    whose CDF exceeds ``u * total``). Row-wise, so a row's draw depends on its own numbers only."""
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def race(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(rows, V)`` warped scores (logits or log-probs; ``-inf``: never), ``(rows,)`` U[0, 1)
    -> ``(rows,)`` tokens drawn from ``softmax(scores)`` by the Gumbel-max race: each row's
    ``u`` seeds a generator that gives every token its own Gumbel noise, and the highest
    perturbed score wins. Row-wise: a row's draw depends on its own scores and ``u`` only.

    Subtle: a row's logits are not bit-identical alone and in a batch (matrix products and
    attention round differently with other rows and padding), by up to about 1e-5. Inverting
    the CDF turns that into a different token whenever ``u`` falls within the drift of any of
    the vocabulary's boundaries; the race changes its token only when the two best perturbed
    scores are that close (``python bench/bench_determinism.py``: 2.5e-4 of draws against
    2.4e-6). So a seeded request decodes the same alone and among others, to float rounding.

    Cost: one generator seeding and ``V`` numbers per row (a loop over rows: each row's noise
    must come from its own number, never from a generator shared with other rows), and the
    rows' numbers are read on the host (one read per call on an accelerator)."""
    rows, vocab = scores.shape
    noise = torch.empty((rows, vocab), dtype=torch.float32, device=scores.device)
    generator = torch.Generator(device=scores.device)
    for row, bits in enumerate(u.detach().to("cpu", torch.float32).view(torch.int32).tolist()):
        generator.manual_seed(bits)
        noise[row].uniform_(generator=generator)
    gumbel = noise.log_().neg_().log_().neg_()  # -log(-log U); U = 0 never wins
    return (scores.float() + gumbel).argmax(-1)


def per_prompt_rand(context: SearchContext, shape: tuple[int, ...], kind: str = "uniform") -> torch.Tensor:
    """``(batch * shape[0], *shape[1:])`` noise, prompt ``b``'s block drawn from its own
    generator: U[0, 1) (``kind="uniform"``) or Exp(1) (``kind="exponential"``)."""
    blocks = []
    for prompt in range(context.batch_size):
        block = torch.empty(shape, device=context.device)
        generator = context.generator(prompt)
        if kind == "uniform":
            block.uniform_(generator=generator)
        else:
            block.exponential_(generator=generator)
        blocks.append(block)
    return torch.cat(blocks, 0)


class Search(Protocol):
    width: int
    """Rows per prompt (1 for greedy, n for sampling, beams for beam search)."""
    scores_are_logprobs: bool
    """True: the engine passes processed log-probs (beam search); False: processed logits."""
    supports_stop_strings: bool
    """True if :meth:`stop_rows` can end single rows (per-row searches, not beam searches)."""

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """Decide step ``t`` (0-based count of generated tokens) from ``(rows, vocab)`` scores."""
        ...

    def stop_rows(self, rows: torch.Tensor) -> None:
        """Mark rows (``(rows,)`` bool) finished by a stop string after the last step."""
        ...

    def finish(self) -> list[list[Hypothesis]]:
        """The hypotheses of each prompt, best first. Called once, after the last step."""
        ...

    def current_best(self, t: int) -> list[list[int]] | None:
        """After step ``t``: each prompt's best running hypothesis (token ids, for streaming a
        search whose rows reorder), or None for a per-row search (its rows stream directly)."""
        ...


class Strategy(Protocol):
    name: str

    def validate(self) -> None:
        """Raise :class:`~decodekit.errors.ConfigError` for a bad setting."""
        ...

    def begin(self, context: SearchContext) -> Search: ...
