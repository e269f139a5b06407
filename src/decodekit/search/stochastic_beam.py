"""Stochastic Beam Search: k sequences sampled exactly without replacement (Gumbel-top-k).

Kool, Van Hoof and Welling (2019), "Stochastic Beams and Where to Find Them: The Gumbel-Top-k
Trick for Sampling Sequences Without Replacement". Every partial sequence ``y`` has its
log-probability ``phi(y)`` (the processed distribution, summed) and a perturbed value ``G(y)``:
the maximum of the Gumbel-perturbed log-probabilities of its completions. A child's value is
drawn conditionally on its parent's (Algorithm 1; eq. 23 and the stable form of Appendix B):
``G'_y ~ Gumbel(phi(y))`` for every child, ``Z = max G'``, and
``G(y) = -log(exp(-G(parent)) - exp(-Z) + exp(-G'_y))``. Keeping the k children with the
largest ``G`` at every step returns the top k of the Gumbel-perturbed sequence log-probs: an
exact sample of k distinct sequences without replacement, in the order they would have been
drawn. Finished sequences (EOS or the length limit: the distribution over sequences cut at
``max_new_tokens``) stay in the beam as their own only child.

The largest value left out, ``kappa``, gives each sampled sequence its inclusion probability
``q(S) = 1 - exp(-exp(phi(S) - kappa))`` (Kool et al. 2019, §4.2; Duffield et al.'s
priority sampling), so ``sum f(S) p(S) / q(S)`` is an unbiased estimate of ``E[f]``
(:func:`estimate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.search.base import (
    Hypothesis,
    SearchContext,
    Step,
    TopTokens,
    normaliser,
    per_prompt_rand,
)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class StochasticBeamSearch:
    """``num_beams`` sequences drawn without replacement from the model (Gumbel-top-k), best
    perturbed value first; each result's ``score`` is its perturbed log-probability ``G`` and
    ``inclusion`` its probability of being in such a sample (for :func:`estimate`).
    ``seed``: the draws' seed (same seed, same sample)."""

    name: ClassVar[str] = "stochastic_beam"
    num_beams: int = 4
    seed: int | None = None

    def validate(self) -> None:
        v.integer("num_beams", self.num_beams, 1, v.MAX_ROWS, "sequences sampled without replacement")
        v.seed("seed", self.seed)

    def begin(self, context: SearchContext) -> StochasticBeamRun:
        return StochasticBeamRun(self, context)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, accurately on both sides of ``-log 2``."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def conditional_gumbel(parent: torch.Tensor, perturbed: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Children's values given their parent's: ``parent`` and ``top`` (the max of
    ``perturbed``) broadcast against ``perturbed``. Stable form of Kool et al. (2019), App. B."""
    u = parent - perturbed + _log1mexp((perturbed - top).clamp(max=0.0))
    out = parent - u.clamp(min=0.0) - torch.log1p(torch.exp(-u.abs()))
    return torch.where(torch.isfinite(perturbed), out, torch.full_like(out, NEG_INF))


class StochasticBeamRun:
    """The running state of one stochastic beam search; ``step`` mutates it."""

    scores_are_logprobs = True
    supports_stop_strings = False
    ends_candidates_at_stop_strings = False

    def __init__(self, config: StochasticBeamSearch, context: SearchContext):
        self.config, self.context = config, context
        self.width = K = config.num_beams
        B, M, device = context.batch_size, context.max_new_tokens, context.device
        self.phi = torch.full((B, K), NEG_INF, device=device)
        self.phi[:, 0] = 0.0  # one live beam at first: the others would be duplicates
        # The root's value is the maximum over all sequences, Gumbel(log 1). A constant would
        # give the same sample (the gaps G - max are independent of the max) but a kappa off
        # by the max, so the inclusion probabilities would be wrong.
        root = -torch.log(-torch.log(per_prompt_rand(context, (1,)).clamp(min=1e-38)))
        self.g = torch.where(torch.isfinite(self.phi), root[:, None].expand(B, K), self.phi)
        self.kappa = torch.full((B,), NEG_INF, device=device)
        self.tokens = torch.full((B, K, M), context.pad_token_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((B, K, M), device=device)
        self.lengths = torch.zeros((B, K), dtype=torch.long, device=device)
        self.finished = torch.zeros((B, K), dtype=torch.bool, device=device)
        n = context.top_logprobs
        self.top = TopTokens(n, (B, K), M, device) if n else None
        self.row_offset = torch.arange(B, device=device)[:, None] * K

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """``scores``: ``(B*K, V)`` processed log-probs of the beams."""
        B, K, M = self.context.batch_size, self.width, self.context.max_new_tokens
        V = scores.shape[-1]
        # the processed distribution itself: the processors may leave it unnormalised
        scores = (scores - normaliser(scores)[:, None]).view(B, K, V)
        # 1. a finished beam's only child is itself (the pad token, log-prob 0)
        pad = self.context.pad_token_id
        alone = torch.full((V,), NEG_INF, device=scores.device)
        alone[pad] = 0.0
        step_logprobs = torch.where(self.finished[:, :, None], alone, scores)
        children = self.phi[:, :, None] + step_logprobs  # (B, K, V)
        # 2. perturb, then condition each beam's children on the beam's own value
        uniform = per_prompt_rand(self.context, (K, V)).view(B, K, V).clamp(min=1e-38)
        perturbed = children - torch.log(-torch.log(uniform))
        top = perturbed.amax(-1, keepdim=True)
        values = conditional_gumbel(self.g[:, :, None], perturbed, top).view(B, K * V)
        # 3. the K largest values continue; the (K+1)-th is the best left out so far
        best = torch.topk(values, min(K + 1, K * V), dim=-1)
        if best.values.shape[1] > K:
            self.kappa = torch.maximum(self.kappa, best.values[:, K])
        keep = best.indices[:, :K]
        parents, tokens = keep // V, keep % V
        self.g = best.values[:, :K]
        self.phi = children.view(B, K * V).gather(1, keep)
        was_finished = self.finished.gather(1, parents)
        token_logprob = step_logprobs.view(B, K * V).gather(1, keep)
        gather = parents[:, :, None].expand(B, K, M)
        self.tokens, self.logprobs = self.tokens.gather(1, gather), self.logprobs.gather(1, gather)
        self.lengths = self.lengths.gather(1, parents) + (~was_finished).long()
        self.tokens[:, :, t] = tokens
        self.logprobs[:, :, t] = token_logprob
        if self.top is not None:
            values_n, ids_n = torch.topk(scores, self.top.n, dim=-1)
            self.top.values = self.top.values.gather(1, parents[:, :, None, None].expand_as(self.top.values))
            self.top.ids = self.top.ids.gather(1, parents[:, :, None, None].expand_as(self.top.ids))
            self.top.values[:, :, t] = values_n.gather(1, parents[:, :, None].expand(B, K, self.top.n))
            self.top.ids[:, :, t] = ids_n.gather(1, parents[:, :, None].expand(B, K, self.top.n))
        hits = torch.isin(tokens, self.context.eos_token_ids) | (t + 1 >= M)
        self.finished = was_finished | hits | ~torch.isfinite(self.g)
        return Step((parents + self.row_offset).view(-1), tokens.view(-1), self.finished.all())

    def current_best(self, t: int) -> list[list[int]]:
        return self.tokens[:, 0, : t + 1].tolist()

    def stop_rows(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("stochastic beam search does not end rows at stop strings")

    def finish(self) -> list[list[Hypothesis]]:
        g, phi, kappa = self.g.tolist(), self.phi.tolist(), self.kappa.tolist()
        tokens, logprobs, lengths = self.tokens.tolist(), self.logprobs.tolist(), self.lengths.tolist()
        tops = (self.top.values.tolist(), self.top.ids.tolist()) if self.top is not None else None
        eos = set(self.context.eos_token_ids.tolist())
        out = []
        for b in range(self.context.batch_size):
            hyps = []
            for k in range(self.width):
                if g[b][k] == NEG_INF:  # fewer distinct sequences than beams
                    continue
                n = lengths[b][k]
                ids = tokens[b][k][:n]
                reason = "eos" if ids and ids[-1] in eos else "length"
                top = TopTokens.host(tops[0][b][k], tops[1][b][k], n) if tops is not None else None
                q = 1.0 if kappa[b] == NEG_INF else -math.expm1(-math.exp(phi[b][k] - kappa[b]))
                hyps.append(Hypothesis(ids, logprobs[b][k][:n], phi[b][k], g[b][k], reason, top_logprobs=top, inclusion=q))
            out.append(hyps)
        return out


def estimate(values: Sequence[float], logprobs: Sequence[float], inclusions: Sequence[float], normalise: bool = True) -> float:
    """Estimate ``E[f]`` from one stochastic beam search sample: ``values[i] = f(S_i)``,
    ``logprobs[i] = log p(S_i)`` (the results' ``logprob``), ``inclusions[i] = q(S_i)``.
    Unbiased: ``sum f p / q``; ``normalise`` divides by ``sum p / q`` (lower variance,
    consistent; Kool et al. 2019, eq. 19-20)."""
    weights = [math.exp(lp) / q for lp, q in zip(logprobs, inclusions)]
    total = sum(w * f for w, f in zip(weights, values))
    return total / sum(weights) if normalise else total

