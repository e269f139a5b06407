"""Greedy decoding and ancestral sampling: every row continues itself (no parents)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, check
from decodekit.logits.base import ProcessorList
from decodekit.logits.warpers import (
    Epsilon,
    Eta,
    MinP,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    TypicalP,
    exclude_top_choices,
    mirostat_truncate,
)
from decodekit.search.base import (
    Hypothesis,
    SearchContext,
    Step,
    TopTokens,
    per_prompt_rand,
    race,
)
from decodekit.speculative.config import Speculative

RUNNING, EOS, LENGTH, STOP, NO_TOKEN, TIME = 0, 1, 2, 3, 4, 5
REASONS = {EOS: "eos", LENGTH: "length", STOP: "stop", NO_TOKEN: "constraint", TIME: "time"}
"""``constraint``: the processors left the row no possible token (every score ``-inf``);
``time``: the request's ``max_time`` ran out."""


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
    temperature, top-k, top-p, min-p, typical-p, epsilon, eta (transformers' order), top-nσ,
    XTC, then Mirostat 2.0; ``n`` samples per prompt share its prefill. Seeded through a
    ``torch.Generator`` (``seed``) for exact reproducibility. ``speculative``: speculative
    sampling with a proposer; the output distribution is unchanged.

    ``epsilon_cutoff``/``eta_cutoff``: truncation sampling (Hewitt et al., 2022; 0 disables).
    ``top_n_sigma``: keep logits within n standard deviations of the top (Tang et al., 2024;
    0 disables). ``xtc_probability``/``xtc_threshold``: with that probability per step, drop
    every token at or above the threshold but the least likely of them (XTC; 0 disables).
    ``mirostat_tau``/``mirostat_eta``: Mirostat 2.0's target surprisal (bits) and learning
    rate (0 disables). ``min_keep``: truncating warpers keep at least that many tokens."""

    name: ClassVar[str] = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    n: int = 1
    seed: int | None = None
    speculative: Speculative | None = None
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_n_sigma: float = 0.0
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0
    mirostat_tau: float = 0.0
    mirostat_eta: float = 0.1
    min_keep: int = 1

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
        for name in ("epsilon_cutoff", "eta_cutoff"):
            v.number(name, getattr(self, name), 0.0, 1.0, what="0 disables")
            check(getattr(self, name) < 1, name, getattr(self, name), "a number in [0, 1) (0 disables)")
        v.number("top_n_sigma", self.top_n_sigma, 0.0, 1e4, what="0 disables")
        v.number("xtc_threshold", self.xtc_threshold, 0.0, 1.0)
        v.number("xtc_probability", self.xtc_probability, 0.0, 1.0, what="0 disables")
        v.number("mirostat_tau", self.mirostat_tau, 0.0, 1e3, what="target surprisal in bits; 0 disables")
        v.number("mirostat_eta", self.mirostat_eta, 0.0, 1.0, low_open=True)
        v.integer("min_keep", self.min_keep, 1, 1 << 20)
        if self.speculative is not None:
            for name in ("xtc_probability", "mirostat_tau"):
                check(getattr(self, name) == 0, name, getattr(self, name), "0 with speculative sampling (its acceptance rule needs a fixed distribution per position)")

    @property
    def row_warpers_only(self) -> bool:
        """True when only the warpers :func:`~decodekit.logits.warpers.warp_rows` handles are
        used (the vectorised pool's condition)."""
        return (self.epsilon_cutoff, self.eta_cutoff, self.top_n_sigma, self.xtc_probability, self.mirostat_tau, self.min_keep) == (0, 0, 0, 0, 0, 1)

    def warpers(self) -> ProcessorList:
        """The deterministic warpers, in order (XTC and Mirostat, which draw or keep state,
        are applied by the search)."""
        keep = self.min_keep
        warpers = []
        if self.temperature != 1.0:
            warpers.append(Temperature(self.temperature))
        if self.top_k is not None:
            warpers.append(TopK(self.top_k, keep))
        if self.top_p < 1.0:
            warpers.append(TopP(self.top_p, keep))
        if self.min_p > 0.0:
            warpers.append(MinP(self.min_p, keep))
        if self.typical_p < 1.0:
            warpers.append(TypicalP(self.typical_p, keep))
        if self.epsilon_cutoff > 0.0:
            warpers.append(Epsilon(self.epsilon_cutoff, keep))
        if self.eta_cutoff > 0.0:
            warpers.append(Eta(self.eta_cutoff, keep))
        if self.top_n_sigma > 0.0:
            warpers.append(TopNSigma(self.top_n_sigma))
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
        self.sampler = sampler
        self.tokens = torch.full((rows, context.max_new_tokens), context.pad_token_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((rows, context.max_new_tokens), device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.reason = torch.zeros(rows, dtype=torch.int8, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        n = context.top_logprobs
        self.top = TopTokens(n, (rows,), context.max_new_tokens, device) if n else None
        # one U[0, 1) number per row and step, each prompt's from its own generator, drawn once
        self.uniforms = per_prompt_rand(context, (width, context.max_new_tokens)) if self.sampling else None
        # XTC's per-step coin, after the token draws (so they are the same with or without it)
        xtc = sampler is not None and sampler.xtc_probability > 0
        self.xtc_uniforms = per_prompt_rand(context, (width, context.max_new_tokens)) if xtc else None
        mirostat = sampler is not None and sampler.mirostat_tau > 0
        self.mu = torch.full((rows,), 2.0 * sampler.mirostat_tau, device=device) if mirostat else None

    def _choose(self, scores: torch.Tensor, t: int) -> torch.Tensor:
        if not self.sampling:
            return scores.argmax(-1)
        warped = self.warpers(None, scores) if len(self.warpers) else scores
        if self.xtc_uniforms is not None:
            apply = self.xtc_uniforms[:, t] < self.sampler.xtc_probability
            warped = exclude_top_choices(warped, self.sampler.xtc_threshold, apply)
        if self.mu is None:
            return race(warped, self.uniforms[:, t])
        truncated = mirostat_truncate(warped, self.mu).log_softmax(-1)
        tokens = race(truncated, self.uniforms[:, t])
        surprisal = -truncated.gather(1, tokens[:, None]).squeeze(1) / math.log(2.0)
        self.mu = torch.where(self.finished, self.mu, self.mu - self.sampler.mirostat_eta * (surprisal - self.sampler.mirostat_tau))
        return tokens

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
        if self.top is not None:
            self.top.values[:, t], self.top.ids[:, t] = torch.topk(log_probs, self.top.n, dim=-1)
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

    def time_out(self) -> None:
        """End every running row (``max_time``): finish reason ``time``."""
        self.reason.masked_fill_(~self.finished, TIME)
        self.finished[:] = True

    def finish(self) -> list[list[Hypothesis]]:
        reasons = self.reason.masked_fill(self.reason == RUNNING, LENGTH).tolist()
        lengths, tokens, logprobs = self.lengths.tolist(), self.tokens.tolist(), self.logprobs.tolist()
        tops = (self.top.values.tolist(), self.top.ids.tolist()) if self.top is not None else None
        out: list[list[Hypothesis]] = []
        for prompt in range(self.context.batch_size):
            group = []
            for row in range(prompt * self.width, (prompt + 1) * self.width):
                n = lengths[row]
                total = float(sum(logprobs[row][:n]))
                top = TopTokens.host(tops[0][row], tops[1][row], n) if tops is not None else None
                group.append(Hypothesis(tokens[row][:n], logprobs[row][:n], total, total, REASONS[reasons[row]], top_logprobs=top))
            out.append(group)
        return out
