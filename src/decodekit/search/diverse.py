"""Diverse Beam Search (Vijayakumar et al., "Diverse Beam Search: Decoding Diverse Solutions
from Neural Sequence Models", AAAI 2018, arXiv:1610.02424, Algorithm 1).

``num_beams`` beams are split into ``num_groups`` groups of ``K = num_beams / num_groups``.
Every step scores all rows with ONE model forward; then the groups decide in order: group 1 is
plain beam search with K beams, group g ranks its candidates by
``log p - lambda_g * similarity(candidate, what groups < g chose)`` (the paper's Eq. 5; the
similarity is a :mod:`decodekit.scoring.diversity` function). Only this ranking runs group by
group; selection bookkeeping, the finished pools and the stopping test are tensors over
``(batch, group, beam)``.

Semantics are those of transformers 4.55's ``_group_beam_search`` (``num_beam_groups``,
``diversity_penalty``), ``BeamSearchScorer``, ``BeamHypotheses`` and
``HammingDiversityLogitsProcessor``, read from its source:

- **The penalty is part of the score.** The Hamming processor subtracts
  ``diversity_penalty * count`` from the group's log-softmaxed, processed scores; those penalised
  scores are added to the running beam scores, so a beam's score is the running sum of
  ``log p(token) - lambda * count(token)`` over its steps. A finished hypothesis is stored with
  ``score = penalised_sum / generated_len ** length_penalty`` and that is what
  ``sequences_scores`` reports and what ranks the returned sequences. Here ``score`` is that
  number, ``group_score`` the penalised sum before length normalisation and ``logprob`` the
  raw (unpenalised) sum of the processed log-probs.
- ``generated_len`` counts generated tokens including the EOS (``cur_len = input_ids + 1``);
  the stored token ids exclude the EOS and ``finalize`` writes ``eos_token_id[0]`` after them
  (decodekit returns the EOS that was actually chosen). Beams still running at the end enter
  their group's pool with their penalised sum over all ``T`` steps run, divided by ``T ** alpha``.
- Per (prompt, group): the top ``max(2, 1 + #eos) * K`` candidates; EOS candidates among the
  first K ranks go to the group's pool of K (best K kept); the first K non-EOS candidates keep
  running. The group is done when its pool holds K hypotheses and (``early_stopping=True``)
  always; (``False``) ``worst >= best_candidate / (t + 1) ** alpha`` where ``best_candidate`` is
  the best of this step's candidates, EOS ones included; (``"never"``) the same with
  ``max_new_tokens`` in place of ``t + 1`` when ``alpha > 0``.
- A done group keeps emitting the pad token with running score 0, and that pad counts as the
  group's token in later groups' penalty. The call ends when every group of every prompt is
  done, or at ``max_new_tokens``; the returned sequences are the best
  ``num_return_sequences`` of all groups' pools together (or per group, ``per_group=True``).

One difference: decodekit's engine applies processors (repetition penalty, ...) before the
search, so the diversity penalty comes after them; transformers 4.55 subtracts it before the
other processors. The two orders agree except for the multiplicative repetition penalty.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import check
from decodekit.scoring.diversity import (
    DIVERSITY_FUNCTIONS,
    DiversityFunction,
    EarlierGroups,
    TokenPenalty,
    make_diversity,
)
from decodekit.scoring.length import LengthPenalty
from decodekit.search.base import Hypothesis, SearchContext, Step, TopTokens, normaliser
from decodekit.search.gather import group_rows, take_group_beams
from decodekit.search.per_prompt import DiversePerPrompt, put

_MASKED = -1.0e9  # transformers' initial score of the beams that must not duplicate beam 0


@dataclass(frozen=True)
class DiverseBeamSearch:
    """Diverse Beam Search: ``num_beams`` beams in ``num_groups`` groups, group g penalised by
    ``diversity_strength`` (lambda: one value, or one per group, the first unused) times a
    ``diversity`` function: ``hamming``, ``cumulative`` (temperature ``diversity_temperature``,
    the paper's Gamma), ``ngram`` (n = ``ngram_size``) or ``embedding`` (cosine similarity of
    ``embeddings``, default the model's input embeddings; ``ngram_size`` tokens summed).
    Returns the best ``num_return_sequences`` of all groups together, or of each group when
    ``per_group``. Length penalty and ``early_stopping`` as in :class:`~decodekit.BeamSearch`."""

    name: ClassVar[str] = "diverse_beam"
    num_beams: int = 8
    num_groups: int = 4
    diversity_strength: float | tuple[float, ...] = 0.5
    diversity: str = "hamming"
    diversity_temperature: float = 1.0
    ngram_size: int = 2
    embeddings: torch.Tensor | None = field(default=None, compare=False, repr=False)
    num_return_sequences: int = 1
    per_group: bool = False
    length_penalty: float = 1.0
    length_penalty_form: str = "exponent"
    early_stopping: bool | str = False

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_groups

    @property
    def strengths(self) -> tuple[float, ...]:
        """lambda for each group (group 0's is never used: it has no earlier groups)."""
        strength = self.diversity_strength
        if isinstance(strength, tuple | list) and len(strength) != 1:
            return tuple(float(s) for s in strength)
        value = strength[0] if isinstance(strength, tuple | list) else strength
        return (float(value),) * self.num_groups

    def validate(self) -> None:
        beams, groups = self.num_beams, self.num_groups
        v.integer("num_beams", beams, 1, v.MAX_ROWS)
        v.integer("num_groups", groups, 1)
        check(groups <= beams, "num_groups", groups, f"at most num_beams={beams}")
        check(beams % groups == 0, "num_groups", groups, f"a divisor of num_beams={beams}")
        strength = self.diversity_strength
        if isinstance(strength, tuple | list):
            check(len(strength) in (1, groups), "diversity_strength", strength, f"one number, or {groups} (one per group)")
        values = strength if isinstance(strength, tuple | list) else (strength,)
        check(
            all(v.is_number(x) and 0 <= x < float("inf") for x in values),
            "diversity_strength",
            strength,
            "finite numbers >= 0 (0 disables the penalty)",
        )
        check(self.diversity in DIVERSITY_FUNCTIONS, "diversity", self.diversity, f"one of {', '.join(DIVERSITY_FUNCTIONS)}")
        temperature = self.diversity_temperature
        v.number("diversity_temperature", temperature, 0.0, 1e12, low_open=True)
        v.integer("ngram_size", self.ngram_size, 1, 64)
        v.flag("per_group", self.per_group)
        if self.embeddings is not None:
            check(self.embeddings.dim() == 2, "embeddings", tuple(self.embeddings.shape), "a (vocab, dim) matrix")
        most = self.group_size if self.per_group else beams
        check(
            v.is_integer(self.num_return_sequences) and 1 <= self.num_return_sequences <= most,
            "num_return_sequences",
            self.num_return_sequences,
            f"an integer in [1, {most}] ({'beams per group' if self.per_group else 'num_beams'})",
        )
        v.choice("early_stopping", self.early_stopping, (True, False, "never"))
        LengthPenalty(self.length_penalty, self.length_penalty_form).validate()

    def begin(self, context: SearchContext) -> DiverseBeamSearchRun:
        embeddings = self.embeddings if self.embeddings is not None else context.input_embeddings
        function = make_diversity(
            self.diversity, temperature=self.diversity_temperature, ngram=self.ngram_size, embeddings=embeddings
        )
        return DiverseBeamSearchRun(self, context, function)


class DiverseBeamSearchRun(DiversePerPrompt):
    """The running state of one Diverse Beam Search call; ``step`` mutates it. Every tensor is
    ``(batch, groups, K, ...)``; row ``r`` of the engine is ``(r // B, (r % B) // K, r % K)``."""

    scores_are_logprobs = True
    supports_stop_strings = False

    def __init__(self, config: DiverseBeamSearch, context: SearchContext, diversity: DiversityFunction):
        self.config, self.context, self.diversity = config, context, diversity
        self.width = config.num_beams
        batch, groups, K, M = context.batch_size, config.num_groups, config.group_size, context.max_new_tokens
        device = context.device
        self.shape = (batch, groups, K)
        self.penalty = LengthPenalty(config.length_penalty, config.length_penalty_form)
        self.strengths = config.strengths
        vocab = context.vocab_size if context.vocab_size else 1 << 62
        self.candidates = min(max(2, 1 + context.eos_token_ids.numel()) * K, K * vocab)
        # running beams: only beam 0 of each group is live at first, so beams do not duplicate
        self.running_scores = torch.zeros(self.shape, device=device)
        self.running_scores[:, :, 1:] = _MASKED
        self.running_logprob = torch.zeros(self.shape, device=device)
        self.running_tokens = torch.full((*self.shape, M), context.pad_token_id, dtype=torch.long, device=device)
        self.running_logprobs = torch.zeros((*self.shape, M), device=device)
        # each group's finished pool of K, best first
        self.pool_scores = torch.full(self.shape, -float("inf"), device=device)
        self.pool_sum = torch.zeros(self.shape, device=device)
        self.pool_logprob = torch.zeros(self.shape, device=device)
        self.pool_tokens = self.running_tokens.clone()
        self.pool_logprobs = self.running_logprobs.clone()
        self.pool_lengths = torch.zeros(self.shape, dtype=torch.long, device=device)
        self.pool_valid = torch.zeros(self.shape, dtype=torch.bool, device=device)
        n = context.top_logprobs
        self.running_top = TopTokens(n, self.shape, M, device) if n else None
        self.pool_top = TopTokens(n, self.shape, M, device) if n else None
        self.done = torch.zeros((batch, groups), dtype=torch.bool, device=device)
        self.local = torch.arange(K, device=device).expand(self.shape)
        self.row_offset = (torch.arange(batch * groups, device=device) * K).view(batch, groups, 1)
        self.steps = 0
        self.eos_at: torch.Tensor | None = None
        self.prompt_done = torch.zeros(batch, dtype=torch.bool, device=device)
        """``(batch,)``: prompts whose groups are all done or that reached their limit (per-prompt mode)."""

    # -- one step ---------------------------------------------------------------------------------

    def _rank_groups(self, scores: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequential part: each group's candidates, penalised by what earlier groups chose.

        ``scores``: ``(batch, G, K, V)``. Returns candidate scores and flat indices
        ``(batch, G, C)``, the positions of the K candidates that keep running ``(batch, G, K)``
        and the tokens the rows append ``(batch, G, K)`` (pad for done groups). Subtle: this
        loop is the only per-group Python, so it is kept to about a dozen tensor ops per group.
        """
        batch, groups, K, V = scores.shape
        if self.eos_at is None or self.eos_at.numel() != K * V:
            # flat candidate index (beam * V + token) -> is the token an EOS?
            self.eos_at = torch.isin(torch.arange(K * V, device=scores.device) % V, self.context.eos_token_ids)
        pad, history_needed = self.context.pad_token_id, self.diversity.needs_history
        group_scores, running, done = scores.unbind(1), self.running_scores.unbind(1), self.done.unbind(1)
        # unpenalised (log p + running score) of every group in one pass; penalties patch it
        accumulated = (scores + self.running_scores[..., None]).unbind(1)
        own = self.running_tokens[..., :t].unbind(1) if history_needed else None
        chosen, histories, all_scores, all_index, all_keep = [], [], [], [], []
        for g in range(groups):
            total = accumulated[g]  # (B, K, V)
            if g > 0 and self.strengths[g] != 0.0:
                earlier = EarlierGroups(g, t, V, torch.cat(chosen, 1))
                if history_needed:
                    earlier = EarlierGroups(g, t, V, earlier.tokens, torch.cat(histories, 1), own[g])
                total = self._penalise(total, group_scores[g], running[g], self.strengths[g], self.diversity(earlier))
            cand_scores, cand_index = torch.topk(total.view(batch, K * V), self.candidates, dim=-1)  # (B, C)
            # the first K candidates that are not EOS keep running, in rank order
            keep = torch.argsort(self.eos_at[cand_index], dim=-1, stable=True)[:, :K]
            kept = cand_index.gather(1, keep)
            tokens = torch.where(done[g][:, None], pad, kept % V)
            chosen.append(tokens)
            if history_needed:
                parents = torch.where(done[g][:, None], self.local[:, 0], kept // V)
                rows = own[g].gather(1, parents[..., None].expand(-1, -1, t))
                histories.append(torch.cat([rows, tokens[..., None]], -1))
            all_scores.append(cand_scores)
            all_index.append(cand_index)
            all_keep.append(keep)
        return torch.stack(all_scores, 1), torch.stack(all_index, 1), torch.stack(all_keep, 1), torch.stack(chosen, 1)

    @staticmethod
    def _penalise(total, scores, running, strength: float, similarity) -> torch.Tensor:
        """``(log p - strength * similarity) + running`` as ``(B, K, V)``, in transformers'
        order of float operations. A :class:`TokenPenalty` patches ``total`` (``log p +
        running``, this call's own buffer) in place at its tokens only: elsewhere
        ``(log p - 0) + running`` is exactly ``log p + running``."""
        if isinstance(similarity, TokenPenalty):
            index = similarity.tokens[:, None, :].expand(-1, scores.shape[1], -1)  # (B, K, E)
            patched = (scores.gather(2, index) - strength * similarity.amounts[:, None, :]) + running[..., None]
            return total.scatter_(2, index, patched)
        return (scores - strength * similarity) + running[..., None]

    def step(self, scores: torch.Tensor, t: int) -> Step:
        """``scores``: ``(batch * num_beams, V)`` processed log-probs of all rows."""
        batch, groups, K = self.shape
        V = scores.shape[-1]
        scores = scores.view(batch, groups, K, V)
        cand_scores, cand_index, keep, tokens = self._rank_groups(scores, t)
        cand_beam, cand_token = cand_index // V, cand_index % V
        total = normaliser(scores)  # (B, G, K): reported log-probs are the processed distribution's
        cand_logprob = scores.view(batch, groups, K * V).gather(2, cand_index) - total.gather(2, cand_beam)  # unpenalised
        cand_sum = self.running_logprob.gather(2, cand_beam) + cand_logprob
        was_done = self.done[..., None]  # (B, G, 1)
        now, lengths = self._step_now(t)  # per-prompt mode: each prompt at its own step

        # 1. EOS candidates among the first K ranks of a live group compete for its pool
        first = cand_beam[..., :K]
        finished = torch.isin(cand_token[..., :K], self.context.eos_token_ids) & ~was_done
        finished_tokens = take_group_beams(self.running_tokens, first)
        put(finished_tokens, now, cand_token[..., :K], 3)
        finished_logprobs = take_group_beams(self.running_logprobs, first)
        put(finished_logprobs, now, cand_logprob[..., :K], 3)
        finished_scores = (cand_scores[..., :K] / self._penalty(lengths, 2)).masked_fill(~finished, -float("inf"))
        finished_top = step_top = None
        if self.running_top is not None:  # a candidate's step top-N is its beam's
            values, ids = torch.topk(scores, self.running_top.n, dim=-1)  # (B, G, K, N)
            values = values - total[..., None]
            step_top = (take_group_beams(values, cand_beam), take_group_beams(ids, cand_beam))
            finished_top = []
            for whole, step in zip((self.running_top.values, self.running_top.ids), step_top):
                taken = take_group_beams(whole, first)
                taken[..., t, :] = step[..., :K, :]
                finished_top.append(taken)
        self._merge(finished_scores, cand_scores[..., :K], cand_sum[..., :K], finished_tokens, finished_logprobs, lengths, finished, finished_top)

        # 2. the kept candidates run on; done groups continue themselves with pad and score 0
        parents = torch.where(was_done, self.local, take_group_beams(cand_beam, keep))
        self.running_scores = take_group_beams(cand_scores, keep).masked_fill(was_done, 0.0)
        kept_logprob = take_group_beams(cand_logprob, keep).masked_fill(was_done, 0.0)
        self.running_logprob = torch.where(was_done, self.running_logprob, take_group_beams(cand_sum, keep))
        self.running_tokens = take_group_beams(self.running_tokens, parents)
        put(self.running_tokens, now, tokens, 3)
        self.running_logprobs = take_group_beams(self.running_logprobs, parents)
        put(self.running_logprobs, now, kept_logprob, 3)
        if self.running_top is not None:
            top = self.running_top
            top.values, top.ids = take_group_beams(top.values, parents), take_group_beams(top.ids, parents)
            live = ~was_done[..., None]
            top.values[..., t, :] = torch.where(live, take_group_beams(step_top[0], keep), 0.0)
            top.ids[..., t, :] = torch.where(live, take_group_beams(step_top[1], keep), 0)

        # 3. is a group done? (transformers 4.55's BeamHypotheses.is_done, per group)
        full = self.pool_valid.all(-1)
        if self.config.early_stopping is True:
            newly_done = full
        else:
            never = self.config.early_stopping == "never" and self.penalty.favors_long
            longest = (self.context.max_new_tokens if isinstance(lengths, int) else self.limits) if never else lengths
            best = cand_scores[..., 0] / self._penalty(longest)
            newly_done = full & (self.pool_scores.min(-1).values >= best)
        self.done = self.done | newly_done
        self.steps = t + 1
        self.prompt_done = self.done.all(-1)
        if self.prompt_steps is not None:
            self.prompt_steps = lengths
            self.prompt_done |= torch.tensor([n >= m for n, m in zip(lengths, self.limits)], device=self.done.device)
        return Step((parents + self.row_offset).view(-1), tokens.view(-1), self.done.all())

    def _merge(self, scores, sums, logprob, tokens, logprobs, length: int | list[int], valid, top=None) -> None:
        """Keep each group's K best of its pool and ``(batch, G, K)`` new entries (``top``:
        their top-N values and ids, when recorded)."""
        merged = torch.cat([self.pool_scores, scores], dim=2)
        pick = torch.topk(merged, self.shape[2], dim=-1).indices
        self.pool_scores = take_group_beams(merged, pick)
        self.pool_sum = take_group_beams(torch.cat([self.pool_sum, sums], dim=2), pick)
        self.pool_logprob = take_group_beams(torch.cat([self.pool_logprob, logprob], dim=2), pick)
        self.pool_tokens = take_group_beams(torch.cat([self.pool_tokens, tokens], dim=2), pick)
        self.pool_logprobs = take_group_beams(torch.cat([self.pool_logprobs, logprobs], dim=2), pick)
        lengths = self._lengths(length, self.pool_lengths)
        self.pool_lengths = take_group_beams(torch.cat([self.pool_lengths, lengths], dim=2), pick)
        self.pool_valid = take_group_beams(torch.cat([self.pool_valid, valid], dim=2), pick)
        if self.pool_top is not None:
            self.pool_top.values = take_group_beams(torch.cat([self.pool_top.values, top[0]], dim=2), pick)
            self.pool_top.ids = take_group_beams(torch.cat([self.pool_top.ids, top[1]], dim=2), pick)

    def current_best(self, t: int) -> list[list[int]]:
        """Each prompt's best running beam over all groups (by its running score), tokens ``0..t``
        (per-prompt mode: each prompt's tokens so far)."""
        batch, groups, K = self.shape
        flat = self.running_scores.view(batch, groups * K).argmax(-1)
        tokens = self.running_tokens.view(batch, groups * K, -1)
        if self.prompt_steps is not None:
            best = tokens[torch.arange(batch, device=flat.device), flat].tolist()
            return [row[:n] for row, n in zip(best, self.prompt_steps)]
        return tokens[torch.arange(batch, device=flat.device), flat, : t + 1].tolist()

    def stop_rows(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("stop strings are checked by the engine only for per-row searches")

    # -- results ----------------------------------------------------------------------------------

    def finish(self, prompts: list[int] | None = None) -> list[list[Hypothesis]]:
        """Beams of groups that are not done enter their pools with all ``T`` steps, then the
        best ``num_return_sequences`` (of all groups, or of each group) are returned
        (``prompts``: only these prompts', the run itself unchanged)."""
        if prompts is not None:
            part = copy.copy(self)
            part.keep(prompts)
            return part.finish()
        T = self.steps if self.prompt_steps is None else self.prompt_steps
        if (T if isinstance(T, int) else max(T, default=0)) > 0:
            live = ~self.done[..., None].expand(self.shape)
            scores = (self.running_scores / self._penalty(T, 2)).masked_fill(~live, -float("inf"))
            top = (self.running_top.values, self.running_top.ids) if self.running_top is not None else None
            self._merge(scores, self.running_scores, self.running_logprob, self.running_tokens, self.running_logprobs, T, live, top)
        batch, groups, K = self.shape
        n = self.config.num_return_sequences
        if self.config.per_group:
            order = torch.arange(groups * K, device=self.pool_scores.device).view(groups, K)[:, :n].reshape(1, -1)
            order = order.expand(batch, -1)
        else:
            order = torch.sort(self.pool_scores.view(batch, -1), dim=-1, descending=True, stable=True).indices[:, :n]
        host = {
            name: group_rows(tensor, order).tolist()
            for name, tensor in (
                ("score", self.pool_scores), ("sum", self.pool_sum), ("logprob", self.pool_logprob),
                ("length", self.pool_lengths), ("tokens", self.pool_tokens), ("logprobs", self.pool_logprobs),
                ("valid", self.pool_valid),
            )
        }
        if self.pool_top is not None:
            host["top_values"], host["top_ids"] = group_rows(self.pool_top.values, order).tolist(), group_rows(self.pool_top.ids, order).tolist()
        group_of = (order // K).tolist()
        eos = set(self.context.eos_token_ids.tolist())
        out = []
        for b in range(batch):
            hyps = []
            for i in range(order.shape[1]):
                if not host["valid"][b][i]:  # an empty pool slot: fewer hypotheses than asked for
                    continue
                length = host["length"][b][i]
                ids = host["tokens"][b][i][:length]
                reason = "eos" if ids and ids[-1] in eos else "length"
                top = TopTokens.host(host["top_values"][b][i], host["top_ids"][b][i], length) if self.pool_top is not None else None
                hyps.append(Hypothesis(
                    ids, host["logprobs"][b][i][:length], host["logprob"][b][i], host["score"][b][i], reason,
                    group=group_of[b][i], group_score=host["sum"][b][i], top_logprobs=top,
                ))
            out.append(hyps)
        return out
