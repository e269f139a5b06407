"""Greedy decoding and ancestral sampling: every row continues itself (no parents)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, check
from decodekit.logits.base import ProcessorList
from decodekit.logits.warpers import MinP, Temperature, TopK, TopP, TypicalP
from decodekit.search.base import Hypothesis, SearchContext, Step, inverse_cdf, per_prompt_rand
from decodekit.speculative.config import Speculative

RUNNING, EOS, LENGTH, STOP, NO_TOKEN = 0, 1, 2, 3, 4
REASONS = {EOS: "eos", LENGTH: "length", STOP: "stop", NO_TOKEN: "constraint"}
"""``constraint``: the processors left the row no possible token (every score ``-inf``)."""


@dataclass(frozen=True)
class Greedy:
    """Take the highest-scoring token at every step. ``speculative``: draft-and-verify with a
    proposer (:class:`~decodekit.speculative.config.Speculative`); the output is unchanged."""

    name: ClassVar[str] = "greedy"
    speculative: Speculative | None = None

    def validate(self) -> None:
        if self.speculative is not None and not isinstance(self.speculative, Speculative):
            raise ConfigError("speculative", self.speculative, "a decodekit.Speculative config or None")

    def begin(self, context: SearchContext) -> RowSearch:
        return RowSearch(context, width=1, sampler=None)


@dataclass(frozen=True)
class Sampling:
    """Ancestral sampling from the processed distribution, reshaped by the warpers in the order
    temperature, top-k, top-p, min-p, typical-p; ``n`` samples per prompt share its prefill.
    Seeded through a ``torch.Generator`` (``seed``) for exact reproducibility. ``speculative``:
    speculative sampling with a proposer; the output distribution is unchanged."""

    name: ClassVar[str] = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    n: int = 1
    seed: int | None = None
    speculative: Speculative | None = None

    def validate(self) -> None:
        v.number("temperature", self.temperature, 1e-4, 1e4, what="use greedy for 0")
        if self.top_k is not None:
            v.integer("top_k", self.top_k, 1, what="or None")
        v.number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        v.number("min_p", self.min_p, 0.0, 1.0)
        check(self.min_p < 1, "min_p", self.min_p, "a number in [0, 1)")
        v.number("typical_p", self.typical_p, 0.0, 1.0, low_open=True)
        v.integer("n", self.n, 1, v.MAX_ROWS, "samples per prompt")
        v.seed("seed", self.seed)
        if self.speculative is not None and not isinstance(self.speculative, Speculative):
            raise ConfigError("speculative", self.speculative, "a decodekit.Speculative config or None")

    def warpers(self) -> ProcessorList:
        warpers = []
        if self.temperature != 1.0:
            warpers.append(Temperature(self.temperature))
        if self.top_k is not None:
            warpers.append(TopK(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopP(self.top_p))
        if self.min_p > 0.0:
            warpers.append(MinP(self.min_p))
        if self.typical_p < 1.0:
            warpers.append(TypicalP(self.typical_p))
        return ProcessorList(warpers)

    def begin(self, context: SearchContext) -> RowSearch:
        return RowSearch(context, width=self.n, sampler=self)


class RowSearch:
    """Per-row search: greedy (``sampler`` None) or sampling. Finished rows emit padding."""

    scores_are_logprobs = False
    supports_stop_strings = True

    def __init__(self, context: SearchContext, width: int, sampler: Sampling | None):
        self.context, self.width = context, width
        rows, device = context.batch_size * width, context.device
        self.warpers = sampler.warpers() if sampler is not None else None
        self.sampling = sampler is not None
        self.tokens = torch.full((rows, context.max_new_tokens), context.pad_token_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((rows, context.max_new_tokens), device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.reason = torch.zeros(rows, dtype=torch.int8, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        # one U[0, 1) number per row and step, each prompt's from its own generator, drawn once
        self.uniforms = per_prompt_rand(context, (width, context.max_new_tokens)) if self.sampling else None

    def _choose(self, scores: torch.Tensor, t: int) -> torch.Tensor:
        if not self.sampling:
            return scores.argmax(-1)
        warped = self.warpers(None, scores) if len(self.warpers) else scores
        return inverse_cdf(warped.softmax(-1), self.uniforms[:, t])

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """``scores``: ``(rows, vocab)`` processed logits. Mutates the search state."""
        log_probs = scores.log_softmax(-1)
        tokens = self._choose(scores, t)
        # a row the processors left no possible token ends here, with nothing appended
        stuck = ~torch.isfinite(scores.amax(-1)) & ~self.finished
        self.reason.masked_fill_(stuck, NO_TOKEN)
        self.finished |= stuck
        tokens = tokens.masked_fill(self.finished, self.context.pad_token_id)
        self.tokens[:, t] = tokens
        self.logprobs[:, t] = log_probs.gather(1, tokens[:, None]).squeeze(1).masked_fill(self.finished, 0.0)
        self.lengths += ~self.finished
        hit_eos = torch.isin(tokens, self.context.eos_token_ids) & ~self.finished
        self.reason.masked_fill_(hit_eos, EOS)
        self.finished |= hit_eos
        return Step(None, tokens, self.finished.all())

    def current_best(self, t: int) -> None:
        return None

    def stop_rows(self, rows: torch.Tensor) -> torch.Tensor:
        newly = rows & ~self.finished
        self.reason.masked_fill_(newly, STOP)
        self.finished |= newly
        return self.finished.all()

    def finish(self) -> list[list[Hypothesis]]:
        reasons = self.reason.masked_fill(self.reason == RUNNING, LENGTH).tolist()
        lengths, tokens, logprobs = self.lengths.tolist(), self.tokens.tolist(), self.logprobs.tolist()
        out: list[list[Hypothesis]] = []
        for prompt in range(self.context.batch_size):
            group = []
            for row in range(prompt * self.width, (prompt + 1) * self.width):
                n = lengths[row]
                total = float(sum(logprobs[row][:n]))
                group.append(Hypothesis(tokens[row][:n], logprobs[row][:n], total, total, REASONS[reasons[row]]))
            out.append(group)
        return out
