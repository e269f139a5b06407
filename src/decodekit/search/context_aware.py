"""Context-aware decoding: contrast the next-token distribution with and without the context.

Shi et al. (2024), "Trusting Your Evidence: Hallucinate Less with Context-aware Decoding",
eq. 2: ``y_t ~ softmax[(1 + alpha) logit(y | c, x) - alpha logit(y | x)]``, also used for
query-focused summarisation ("Context-aware Decoding Reduces Hallucination in Query-focused
Summarization", Xu 2023). Each sequence decodes as two rows of the same batch — the prompt
with the context and the prompt alone — so both distributions come from one forward per
step; both rows receive the chosen token. (Log-probabilities differ from logits by a
per-row constant, which the softmax removes, so the contrast is taken on log-probs.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, check
from decodekit.search.base import Hypothesis, SearchContext, Step, per_prompt_rand, race
from decodekit.search.sampling import EOS, LENGTH, NO_TOKEN, REASONS, STOP, Sampling

_FLOOR = -1.0e4
"""Where the context-free row rules a token out (-inf), its log-prob counts as this floor, so
a token the context makes possible gets a large finite score instead of +inf."""


@dataclass(frozen=True)
class ContextAwareDecoding:
    """``context``: text (or token ids) put before each prompt for the "with context" row;
    ``alpha``: the contrast (0: plain decoding with the context); ``sampler``: sample from the
    contrasted distribution with these warpers (None: greedy). ``token_logprobs`` are the
    contrasted distribution's."""

    name: ClassVar[str] = "context_aware"
    context: str | tuple[int, ...] = ""
    alpha: float = 0.5
    sampler: Sampling | None = None

    def validate(self) -> None:
        if isinstance(self.context, str):
            check(bool(self.context), "context", self.context, "non-empty text or token ids placed before the prompt")
        else:
            v.token_ids("context", self.context, empty=False)
        v.number("alpha", self.alpha, 0.0, 1e3)
        if self.sampler is not None:
            if not isinstance(self.sampler, Sampling):
                raise ConfigError("sampler", self.sampler, "a decodekit.Sampling config or None (greedy)")
            self.sampler.validate()
            check(self.sampler.n == 1, "sampler.n", self.sampler.n, "1 (one sequence per prompt)")
            for name in ("xtc_probability", "mirostat_tau"):
                check(not getattr(self.sampler, name), f"sampler.{name}", getattr(self.sampler, name), "0 with context-aware decoding")
            check(self.sampler.speculative is None, "sampler.speculative", self.sampler.speculative, "None")

    def with_context(self, prompt):
        """The "with context" prompt: the context followed by ``prompt`` (both text or both ids)."""
        if isinstance(prompt, str) != isinstance(self.context, str):
            raise ConfigError("context", self.context, "text for text prompts, token ids for token-id prompts")
        return self.context + prompt if isinstance(prompt, str) else [*self.context, *prompt]

    def pair(self, prompt, encode) -> tuple:
        """The two rows' prompts: with the context, and the prompt alone."""
        return self.with_context(prompt), prompt

    def begin(self, context: SearchContext) -> ContextAwareRun:
        return ContextAwareRun(self, context)


class ContextAwareRun:
    """Rows ``2i`` (with context) and ``2i + 1`` (without) decode sequence ``i`` together."""

    scores_are_logprobs = True
    supports_stop_strings = True
    records_top_logprobs = False
    width = 1

    def __init__(self, config: ContextAwareDecoding, context: SearchContext):
        if context.batch_size % 2:
            raise ConfigError("strategy", config, "context-aware decoding through Decoder.generate (prompts come in pairs)")
        self.config, self.context = config, context
        pairs, M, device = context.batch_size // 2, context.max_new_tokens, context.device
        self.warpers = config.sampler.warpers() if config.sampler is not None else None
        self.tokens = torch.full((pairs, M), context.pad_token_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((pairs, M), device=device)
        self.lengths = torch.zeros(pairs, dtype=torch.long, device=device)
        self.finished = torch.zeros(pairs, dtype=torch.bool, device=device)
        self.reason = torch.full((pairs,), LENGTH, dtype=torch.int8, device=device)
        # one U[0, 1) per pair and step, from the with-context prompt's own generator
        self.uniforms = per_prompt_rand(context, (1, M))[0::2] if config.sampler is not None else None

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """``scores``: ``(2 * pairs, vocab)`` processed log-probs, rows in pairs."""
        alpha = self.config.alpha
        with_context, alone = scores[0::2], scores[1::2]
        contrast = (1.0 + alpha) * with_context - alpha * alone.clamp(min=_FLOOR)
        contrast = torch.where(torch.isfinite(with_context), contrast, torch.full_like(contrast, float("-inf")))
        if self.warpers is None:
            chosen = contrast.argmax(-1)
        else:
            warped = self.warpers(None, contrast) if len(self.warpers) else contrast
            chosen = race(warped, self.uniforms[:, t])
        stuck = ~torch.isfinite(contrast.amax(-1)) & ~self.finished
        logprob = contrast.log_softmax(-1).gather(1, chosen[:, None]).squeeze(1)
        chosen = chosen.masked_fill(self.finished | stuck, self.context.pad_token_id)
        live = ~self.finished & ~stuck
        self.tokens[:, t] = chosen
        self.logprobs[:, t] = logprob.masked_fill(~live, 0.0)
        self.lengths += live
        eos = torch.isin(chosen, self.context.eos_token_ids) & live
        self.reason.masked_fill_(eos, EOS).masked_fill_(stuck, NO_TOKEN)
        self.finished |= eos | stuck
        return Step(None, chosen.repeat_interleave(2), self.finished.all())

    def stop_rows(self, rows: torch.Tensor) -> torch.Tensor:
        hit = (rows[0::2] | rows[1::2]) & ~self.finished
        self.reason.masked_fill_(hit, STOP)
        self.finished |= hit
        return self.finished.all()

    def current_best(self, t: int) -> None:
        return None

    def finish(self) -> list[list[Hypothesis]]:
        lengths, tokens, logprobs = self.lengths.tolist(), self.tokens.tolist(), self.logprobs.tolist()
        reasons = self.reason.tolist()
        out = []
        for i, n in enumerate(lengths):
            total = float(sum(logprobs[i][:n]))
            hypothesis = Hypothesis(tokens[i][:n], logprobs[i][:n], total, total, REASONS[reasons[i]])
            out.extend([[hypothesis], [hypothesis]])  # the context-free row's copy is dropped
        return out
