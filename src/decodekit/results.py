"""Typed results of a decoding call."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenLogprob:
    """One of the most likely tokens at a position: its id, log-prob and text (None without
    a tokenizer)."""

    token_id: int
    logprob: float
    text: str | None = None


@dataclass(frozen=True)
class GeneratedSequence:
    """One output. ``token_ids`` are the generated tokens (the EOS that ended it included);
    ``token_logprobs[i]`` is token i's log-probability under the processed distribution it was
    chosen from (processors and constraint applied, renormalised, before sampling warpers), for
    every strategy; ``logprob`` is their sum; ``score`` is what the
    strategy ranked by (equal to ``logprob`` for greedy and sampling, length-normalised for beam
    search, diversity-penalised for Diverse Beam Search). ``finish_reason`` is one of
    ``eos``, ``length``, ``stop``, ``constraint``, ``time``, ``error``. ``constraint``: with a
    constraint, its report on this output (``name``, ``valid``, and e.g. ``occurrences`` for a
    corpus substring or ``entry`` for a catalog); None without one. ``top_logprobs``: with the
    ``top_logprobs=N`` option, per generated token the N most likely tokens of the same
    distribution as ``token_logprobs``, most likely first. ``inclusion``: with stochastic beam
    search, the probability that the sequence is in such a sample (see
    :func:`decodekit.search.stochastic_beam.estimate`); None otherwise."""

    token_ids: list[int]
    text: str | None
    token_logprobs: list[float]
    logprob: float
    score: float
    finish_reason: str
    group: int = 0
    constraint: dict | None = None
    top_logprobs: list[list[TokenLogprob]] | None = None
    inclusion: float | None = None
    scores: Any = None
    """With ``output_scores``: ``(tokens, vocab)`` float32, the processed log-probabilities each
    token was chosen from (processors and constraint applied, renormalised;
    ``token_logprobs[t]`` is ``scores[t, token_ids[t]]``)."""
    logits: Any = None
    """With ``output_logits``: ``(tokens, vocab)`` float32, the model's raw logits."""

    def to_dict(self) -> dict:
        out = asdict(dataclasses.replace(self, scores=None, logits=None))
        for name in ("scores", "logits"):  # only when asked for (they are vocabulary-wide)
            del out[name]
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).tolist()
        return out


@dataclass(frozen=True)
class ScoredContinuation:
    """A given continuation scored under the model (:meth:`Decoder.score`): each token's
    log-probability after the prompt and the tokens before it, and their sum."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    token_logprobs: list[float]
    logprob: float
    text: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """Everything decoded for one prompt, best first (samples keep their draw order)."""

    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[GeneratedSequence] = field(default_factory=list)
    strategy: str = ""
    stats: Any = None
    """Speculative decoding's acceptance statistics
    (:class:`~decodekit.speculative.loop.SpeculationStats`); None otherwise."""

    @property
    def best(self) -> GeneratedSequence:
        return self.sequences[0]

    @property
    def text(self) -> str | None:
        return self.best.text

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "prompt_token_ids": self.prompt_token_ids,
            "strategy": self.strategy,
            "sequences": [s.to_dict() for s in self.sequences],
        } | ({"stats": asdict(self.stats)} if self.stats is not None else {})


@dataclass(frozen=True)
class StreamEvent:
    """One streamed token of row ``row`` (sample index); ``text`` is the new text it adds (may
    be empty while a multi-byte character is incomplete). The last event of a row carries its
    ``finish_reason``.

    Beam searches (whose best hypothesis can change at every step) stream the current best
    hypothesis instead: ``hypothesis`` holds its token ids and ``text`` its whole text; their
    last event carries ``finish_reason`` and ``result``, the final n-best
    (:class:`GenerationResult`)."""

    row: int
    step: int
    token_id: int | None
    text: str
    logprob: float | None
    finish_reason: str | None = None
    hypothesis: tuple[int, ...] | None = None
    result: GenerationResult | None = None
    top_logprobs: list[TokenLogprob] | None = None
    """With the ``top_logprobs`` option: the most likely tokens at this position."""
