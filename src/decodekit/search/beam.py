"""Beam search with transformers' semantics, and beam sampling.

Per step, for each prompt: keep the top ``C = max(2, 1 + #eos) * K`` continuations of the K
running beams; the best K that did not just finish keep running; those among the first K
candidates that finished (EOS, or the length limit) compete, length-normalised, for the K slots
of the finished pool. ``early_stopping`` decides when a prompt is done:

- ``True``: as soon as K hypotheses finished;
- ``False``: when the best running beam, normalised at its *current* length, cannot beat the
  worst finished one (transformers' heuristic);
- ``"never"``: the same test at the best *possible* length (the canonical, exact stop when the
  length penalty is positive).

Everything is a tensor of shape ``(batch, K, ...)``; there is no Python loop over beams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, InputError, check
from decodekit.scoring.coverage import coverage_penalty, source_attention
from decodekit.scoring.length import LengthPenalty
from decodekit.scoring.rerank import Rescoring, as_scorer
from decodekit.search.base import (
    Hypothesis,
    SearchContext,
    Step,
    TopTokens,
    normaliser,
    per_prompt_rand,
)
from decodekit.search.gather import take_beams
from decodekit.search.per_prompt import BeamPerPrompt, put
from decodekit.search.sampling import Sampling

_MASKED = -1.0e9  # the additive mask transformers uses; kept identical for score parity


@dataclass(frozen=True)
class BeamSearch:
    """Beam search returning an n-best list. ``sampler`` turns it into beam sampling
    (candidates drawn without replacement from the accumulated scores, as transformers)."""

    name: ClassVar[str] = "beam"
    num_beams: int = 4
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    length_penalty_form: str = "exponent"
    early_stopping: bool | str = False
    sampler: Sampling | None = field(default=None)
    coverage_penalty: float = 0.0
    """GNMT's coverage penalty beta (eq. 14, :mod:`decodekit.scoring.coverage`) added to every
    finished hypothesis' score, from the decoder's cross-attention (encoder-decoder models;
    0: off). Pair it with ``length_penalty_form="gnmt"`` for GNMT's full scoring function."""
    coverage_layer: int = -1
    """Which decoder layer's cross-attention the coverage penalty reads."""
    rescore: Rescoring | None = None
    """Re-score the candidates with an external scorer every few steps
    (:class:`~decodekit.scoring.rerank.Rescoring`; RankGen-style in-beam re-ranking)."""
    coverage_head: int | None = None
    """Which head of that layer (None: the mean of its heads; OpenNMT-py and CTranslate2 read
    head 0 of the last layer)."""

    @property
    def penalty(self) -> LengthPenalty:
        return LengthPenalty(self.length_penalty, self.length_penalty_form)

    def validate(self) -> None:
        v.integer("num_beams", self.num_beams, 1, v.MAX_ROWS)
        v.integer("num_return_sequences", self.num_return_sequences, 1, self.num_beams, "at most num_beams")
        v.choice("early_stopping", self.early_stopping, (True, False, "never"))
        self.penalty.validate()
        v.number("coverage_penalty", self.coverage_penalty, 0.0, 1e3)
        v.integer("coverage_layer", self.coverage_layer, -1024, 1023, "a decoder layer index (negative counts from the last)")
        if self.coverage_head is not None:
            v.integer("coverage_head", self.coverage_head, -1024, 1023, "an attention head index, or None for the mean of the heads")
        if self.rescore is not None:
            if not isinstance(self.rescore, Rescoring):
                raise ConfigError("rescore", self.rescore, "a decodekit.scoring.Rescoring(scorer, every, weight) or None")
            self.rescore.validate()
            check(self.early_stopping != "never", "early_stopping", self.early_stopping, "True or False with rescore (a scorer's future values are unknown, so no exact bound exists)")
        if self.sampler is not None:
            if not isinstance(self.sampler, Sampling):
                raise ConfigError("sampler", self.sampler, "a decodekit.Sampling config or None")
            self.sampler.validate()
            check(self.sampler.n == 1, "sampler.n", self.sampler.n, "1 (beam sampling keeps num_beams rows)")
            check(self.sampler.speculative is None, "sampler.speculative", self.sampler.speculative, "None")

    def begin(self, context: SearchContext) -> BeamSearchRun:
        return BeamSearchRun(self, context)


class BeamSearchRun(BeamPerPrompt):
    """The running state of one beam search call; ``step`` mutates it."""

    scores_are_logprobs = True
    supports_stop_strings = False
    ends_candidates_at_stop_strings = True
    """A candidate whose text reaches a stop string is a finished hypothesis, as one ending
    with EOS (finish reason ``stop``)."""

    def __init__(self, config: BeamSearch, context: SearchContext, num_beams: int | None = None):
        self.config, self.context = config, context
        self.width = K = num_beams or config.num_beams
        B, M, device = context.batch_size, context.max_new_tokens, context.device
        self.penalty = config.penalty
        self.warpers = config.sampler.warpers() if config.sampler is not None else None
        # Subtle: many EOS ids can ask for more candidates than a step has (K beams x V tokens)
        vocab = context.vocab_size if context.vocab_size else 1 << 62
        self.candidates = min(max(2, 1 + context.eos_token_ids.numel()) * K, K * vocab)
        # running beams; only beam 0 is live at the start so the K beams do not duplicate
        self.running_scores = torch.zeros((B, K), device=device)
        self.running_scores[:, 1:] = _MASKED
        self.running_tokens = torch.full((B, K, M), context.pad_token_id, dtype=torch.long, device=device)
        self.running_logprobs = torch.zeros((B, K, M), device=device)
        # finished pool, best first
        self.pool_scores = torch.full((B, K), _MASKED, device=device)
        self.pool_logprob = torch.zeros((B, K), device=device)
        self.pool_tokens = self.running_tokens.clone()
        self.pool_logprobs = self.running_logprobs.clone()
        self.pool_lengths = torch.zeros((B, K), dtype=torch.long, device=device)
        self.pool_finished = torch.zeros((B, K), dtype=torch.bool, device=device)
        n = context.top_logprobs
        self.running_top = TopTokens(n, (B, K), M, device) if n else None
        self.pool_top = TopTokens(n, (B, K), M, device) if n else None
        self.can_improve = torch.ones((B, 1), dtype=torch.bool, device=device)
        self.top_k_mask = torch.arange(self.candidates, device=device) < K
        self.row_offset = torch.arange(B, device=device)[:, None] * K
        self.beta = float(getattr(config, "coverage_penalty", 0.0))
        self.attention = "cross" if self.beta else None
        """The engine hands :meth:`attend` the cross-attention of every forward."""
        self.attention_field = "coverage_penalty"
        self.coverage = self.step_attention = None  # (B, K, source): summed, this step's
        self.rescore = getattr(config, "rescore", None)
        self.bonus = torch.zeros((B, K), device=device)  # each beam's last scorer value
        self.prompt_done = torch.zeros(B, dtype=torch.bool, device=device)
        """``(batch,)``: prompts whose n-best can no longer change (set by :meth:`step`)."""
        if self.rescore is not None:
            self.scorer = as_scorer(self.rescore.scorer)
            decode = context.decode
            self.prompt_texts = [decode(list(p)) if decode else list(p) for p in context.prompts]

    def attend(self, weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B*K, layers, heads, source)`` cross-attention of the forward that produced this
        step's ``logits`` (returned unchanged): the attention that chose this step's tokens."""
        B, K = self.context.batch_size, self.width
        config = self.config
        for name, index, size, what in (("coverage_layer", config.coverage_layer, weights.shape[1], "decoder layers"), ("coverage_head", config.coverage_head, weights.shape[2], "heads")):
            if index is not None and not -size <= index < size:
                raise ConfigError(name, index, f"an index of the model's {size} {what}")
        self.step_attention = source_attention(weights, config.coverage_layer, config.coverage_head).view(B, K, -1)
        if self.coverage is None:
            self.coverage = torch.zeros_like(self.step_attention)
            lengths = torch.tensor(self.context.prompt_lengths, device=weights.device)
            self.source = torch.arange(weights.shape[-1], device=weights.device) < lengths[:, None, None]
        return logits

    def _select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, V)`` step log-probs -> the C candidates' accumulated scores and flat
        indices into ``K * V``, both ``(B, C)``."""
        B, K, V = scores.shape
        C = min(self.candidates, V)
        if self.warpers is None:
            # Two stages, same result as one top-C over all K*V continuations: the global top C
            # lie within each beam's own top C, and adding a beam's running score keeps the
            # order inside the beam. Scanning rows separately is ~1.5x cheaper on CPU.
            row_scores, row_tokens = torch.topk(scores, C, dim=-1)  # (B, K, C)
            accumulated = (row_scores + self.running_scores[:, :, None]).view(B, K * C)
            cand_scores, flat = torch.topk(accumulated, self.candidates, dim=-1)
            beams = torch.div(flat, C, rounding_mode="floor")
            return cand_scores, beams * V + row_tokens.view(B, K * C).gather(1, flat)
        accumulated = (scores + self.running_scores[:, :, None]).view(B, K * V)
        probs = accumulated.softmax(-1)
        # Sampling C candidates without replacement = the C largest p_i / E_i with E_i ~ Exp(1)
        # (exponential races); each prompt's E from its own generator.
        races = per_prompt_rand(self.context, (1, K * V), kind="exponential")
        index = torch.topk(probs / races, self.candidates, dim=-1).indices
        return accumulated.gather(1, index), index

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """``scores``: ``(B*K, V)`` processed log-probs of the running beams (``t``: the step,
        ignored in per-prompt mode, where each prompt has its own)."""
        B, K, M = self.running_scores.shape[0], self.width, self.context.max_new_tokens
        now, lengths = self._step_now(t)  # per-prompt mode: each prompt at its own step, with its own limit
        at_limit = t + 1 >= M if isinstance(now, int) else (now + 1 >= torch.tensor(self.limits, device=now.device))[:, None]
        processed = scores
        total = normaliser(processed)  # (B*K,): reported log-probs are the processed distribution's
        if self.warpers is not None:
            scores = self.warpers(None, scores)
        V = scores.shape[-1]

        # 1. the C best (or sampled) continuations
        cand_scores, cand_index = self._select(scores.view(B, K, V))
        cand_beam, cand_token = cand_index // V, cand_index % V
        cand_logprob = processed.view(B, K * V).gather(1, cand_index) - total.view(B, K).gather(1, cand_beam)
        self.step_top = None
        if self.running_top is not None:  # each candidate's step top-N: its beam's
            values, ids = torch.topk(processed, self.running_top.n, dim=-1)
            values = values - total[:, None]
            self.step_top = (take_beams(values.view(B, K, -1), cand_beam), take_beams(ids.view(B, K, -1), cand_beam))
        hits = torch.isin(cand_token, self.context.eos_token_ids) | at_limit
        if self.context.stop_check is not None:
            hits |= self._stop_hits(cand_beam, cand_token, now)

        # 2. the K best unfinished candidates keep running
        running = cand_scores + hits.float() * _MASKED
        rank, mixed = running, None
        if self.rescore is not None:
            rank, mixed = self._rescored(cand_scores, cand_beam, cand_token, hits, t)
        keep = torch.topk(rank, K, dim=-1).indices
        parents = take_beams(cand_beam, keep)
        tokens = take_beams(cand_token, keep)

        # 3. finished candidates among the first K compete for the pool
        # a candidate grown from a masked (not yet real) beam is no hypothesis: it would only
        # pad a short n-best with duplicates scored about -1e9
        just_finished = hits & self.top_k_mask & (cand_scores > _MASKED / 2)
        # Subtle: with nothing finished the merge keeps the pool as it is, so it is skipped;
        # reading the flag is free on the CPU, on an accelerator it would cost a sync.
        if self.context.device.type != "cpu" or bool(just_finished.any()):
            self._merge_finished(cand_scores, cand_beam, cand_token, cand_logprob, just_finished, now, lengths, mixed)

        self.running_scores = take_beams(running, keep)
        if mixed is not None:
            self.bonus = take_beams(self.cand_bonus, keep)
        self.running_tokens = take_beams(self.running_tokens, parents)
        put(self.running_tokens, now, tokens, 2)
        self.running_logprobs = take_beams(self.running_logprobs, parents)
        put(self.running_logprobs, now, take_beams(cand_logprob, keep), 2)
        if self.beta:
            self.coverage = take_beams(self.coverage + self.step_attention, parents)
        if self.running_top is not None:
            top = self.running_top
            top.values, top.ids = take_beams(top.values, parents), take_beams(top.ids, parents)
            put(top.values, now, take_beams(self.step_top[0], keep), 2)
            put(top.ids, now, take_beams(self.step_top[1], keep), 2)

        # 4. can a running beam still beat the worst finished hypothesis?
        never = self.config.early_stopping == "never" and self.penalty.favors_long
        best_length = (M if isinstance(lengths, int) else self.limits) if never else lengths
        best_possible = self.running_scores[:, :1] / self._penalty(best_length)
        if self.rescore is not None:  # the best running beam by its mixed score, as it stands
            w = self.rescore.weight
            best_possible = ((1 - w) * self.running_scores / self.penalty(best_length) + w * self.bonus).amax(1, keepdim=True)
        worst = torch.where(self.pool_finished, self.pool_scores.min(1, keepdim=True).values, _MASKED)
        self.can_improve &= (best_possible > worst).any(-1, keepdim=True)
        self.prompt_done = ~self.can_improve[:, 0] | hits.all(-1)
        if self.config.early_stopping is True:
            self.prompt_done |= self.pool_finished.all(-1)
        if self.prompt_steps is not None:
            self.prompt_steps = lengths
        done = self.prompt_done.all()
        return Step((parents + self.row_offset).view(-1), tokens.view(-1), done)

    def _stop_hits(self, cand_beam: torch.Tensor, cand_token: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``(B, C)``: does a candidate's generated text reach a stop string? (``t``: the step,
        or per-prompt steps: then one check per prompt, of its own tokens)"""
        B, C = cand_beam.shape
        if not isinstance(t, int):
            hits = torch.zeros((B, C), dtype=torch.bool, device=cand_beam.device)
            for b, n in enumerate(self.prompt_steps):
                generated = self.running_tokens[b, :, :n].index_select(0, cand_beam[b])  # (C, n)
                hits[b] = self.context.stop_check(torch.cat([generated, cand_token[b, :, None]], -1))
            return hits
        generated = take_beams(self.running_tokens[:, :, :t], cand_beam)  # (B, C, t)
        generated = torch.cat([generated, cand_token[..., None]], -1).view(B * C, t + 1)
        return self.context.stop_check(generated).view(B, C)

    def _rescored(self, cand_scores, cand_beam, cand_token, hits, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """In-beam re-scoring: the candidates' ranks ``(1 - w) logprob + w bonus`` (``(B, C)``,
        finished and placeholder candidates masked) and finished candidates' mixed scores."""
        w = self.rescore.weight
        bonus = take_beams(self.bonus, cand_beam)
        real = cand_scores > _MASKED / 2
        due = (t + 1) % self.rescore.every == 0
        need = (torch.ones_like(hits) if due else hits & self.top_k_mask) & real
        if bool(need.any()):
            bonus = torch.where(need, self._score(cand_beam, cand_token, need, t), bonus)
        self.cand_bonus = bonus
        rank = (1 - w) * cand_scores + w * bonus + (hits | ~real).float() * _MASKED
        return rank, (1 - w) * cand_scores / self.penalty(t + 1) + w * bonus

    def _score(self, cand_beam, cand_token, need, t: int) -> torch.Tensor:
        """``(B, C)`` scorer values of the candidates ``need`` marks (others 0)."""
        out = torch.zeros(need.shape, device=need.device)
        decode = self.context.decode
        beams, tokens, marked = cand_beam.tolist(), cand_token.tolist(), need.tolist()
        prefix = self.running_tokens[:, :, :t].tolist()
        for b, row in enumerate(marked):
            picks = [c for c, flag in enumerate(row) if flag]
            seqs = [[*prefix[b][beams[b][c]], tokens[b][c]] for c in picks]
            texts = [decode(s) for s in seqs] if decode else seqs
            values = self.scorer.score(self.prompt_texts[b], texts)
            if len(values) != len(picks):
                raise InputError(f"rescore.scorer returned {len(values)} scores for {len(picks)} candidates")
            out[b, picks] = torch.tensor([float(x) for x in values], device=out.device)
        if not bool(torch.isfinite(out).all()):
            raise InputError("rescore.scorer returned a score that is not a finite number")
        return out

    def _merge_finished(self, cand_scores, cand_beam, cand_token, cand_logprob, just_finished, t, lengths, mixed=None) -> None:
        """Finished candidates compete, length-normalised, with the pool for its K slots
        (``mixed``: their scores under in-beam re-scoring instead). ``t``/``lengths``: the step
        and the candidates' length, shared or per prompt."""
        K = self.width
        cand_tokens = take_beams(self.running_tokens, cand_beam)
        put(cand_tokens, t, cand_token, 2)
        cand_logprobs = take_beams(self.running_logprobs, cand_beam)
        put(cand_logprobs, t, cand_logprob, 2)
        finished_scores = cand_scores / self._penalty(lengths) if mixed is None else mixed
        if self.beta:  # eq. 14: lp-normalised log-prob plus the candidate's coverage penalty
            coverage = take_beams(self.coverage + self.step_attention, cand_beam)
            finished_scores = finished_scores + coverage_penalty(coverage, self.source, self.beta)
        if self.config.early_stopping is True:
            pool_full = self.pool_finished.all(-1, keepdim=True)
            finished_scores = finished_scores + pool_full.float() * _MASKED
        finished_scores = finished_scores + (~self.can_improve).float() * _MASKED
        finished_scores = finished_scores + (~just_finished).float() * _MASKED
        merged = torch.cat([self.pool_scores, finished_scores], dim=1)
        pick = torch.topk(merged, K, dim=-1).indices
        lengths = self._lengths(lengths, cand_beam)
        self.pool_scores = take_beams(merged, pick)
        self.pool_logprob = take_beams(torch.cat([self.pool_logprob, cand_scores], dim=1), pick)
        self.pool_tokens = take_beams(torch.cat([self.pool_tokens, cand_tokens], dim=1), pick)
        self.pool_logprobs = take_beams(torch.cat([self.pool_logprobs, cand_logprobs], dim=1), pick)
        self.pool_lengths = take_beams(torch.cat([self.pool_lengths, lengths], dim=1), pick)
        self.pool_finished = take_beams(torch.cat([self.pool_finished, just_finished], dim=1), pick)
        if self.pool_top is not None:
            for name, step in zip(("values", "ids"), self.step_top):
                cand = take_beams(getattr(self.running_top, name), cand_beam)
                put(cand, t, step, 2)
                setattr(self.pool_top, name, take_beams(torch.cat([getattr(self.pool_top, name), cand], dim=1), pick))

    def current_best(self, t: int) -> list[list[int]]:
        """Each prompt's best running beam (beams are kept sorted by score), tokens ``0..t``
        (per-prompt mode: each prompt's tokens so far)."""
        if self.prompt_steps is not None:
            return [row[:n] for row, n in zip(self.running_tokens[:, 0].tolist(), self.prompt_steps)]
        return self.running_tokens[:, 0, : t + 1].tolist()

    def stop_rows(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("beam search ends its candidates at stop strings itself")

    def finish(self, prompts: list[int] | None = None) -> list[list[Hypothesis]]:
        """Every prompt's n-best (``prompts``: only these prompts')."""
        n = self.config.num_return_sequences
        if prompts is None:
            prompts = list(range(self.running_scores.shape[0]))
        index = torch.tensor(prompts, dtype=torch.long, device=self.pool_scores.device)

        def host(tensor: torch.Tensor) -> list:
            return tensor.index_select(0, index)[:, :n].tolist()

        scores, lengths, tokens, logprobs, filled = (host(x) for x in (self.pool_scores, self.pool_lengths, self.pool_tokens, self.pool_logprobs, self.pool_finished))
        tops = (host(self.pool_top.values), host(self.pool_top.ids)) if self.pool_top is not None else None
        eos = set(self.context.eos_token_ids.tolist())
        stop = self.context.stop_check
        out = []
        for b in range(len(prompts)):
            hyps = []
            for k in range(n):
                if not filled[b][k]:  # fewer finished hypotheses than asked for: return fewer
                    continue
                ids = tokens[b][k][: lengths[b][k]]
                reason = "eos" if ids and ids[-1] in eos else "length"
                if reason == "length" and stop is not None and ids and bool(stop(torch.tensor([ids]))[0]):
                    reason = "stop"
                top = TopTokens.host(tops[0][b][k], tops[1][b][k], lengths[b][k]) if tops is not None else None
                steps = logprobs[b][k][: lengths[b][k]]
                hyps.append(Hypothesis(ids, steps, float(sum(steps)), scores[b][k], reason, top_logprobs=top))
            out.append(hyps)
        return out
