"""Constrained beam search: beam search whose outputs must contain given phrases (or one of
several alternatives), as transformers 4.x's ``generate(force_words_ids=...)`` /
``constraints=[PhrasalConstraint, DisjunctiveConstraint]`` decoded (removed from its core in
transformers 5). Hokamp and Liu (2017), "Lexically Constrained Decoding for Sequence
Generation Using Grid Beam Search", with the bank-based selection of Post and Vilar (2018).

Per step, for each prompt:

1. the top ``max(2, 1 + #eos) * K`` continuations of the K beams, by accumulated log-prob;
   those that end (EOS) among the first K become hypotheses if their beam met every
   constraint; the best K others are the step's candidates;
2. every beam that has not met its constraints also proposes the tokens that advance them
   (the next token of the phrase in progress, or the first token of each pending one), each
   with its accumulated score;
3. candidates are grouped into *banks* by their progress (constraints met times the longest
   constraint, plus the progress of the one in progress) and the K beams are taken round-robin
   across banks, best bank first (within a bank by score), so that beams with more progress
   survive next to likelier ones.

Progress is tracked as transformers did: a token that does not continue the phrase in
progress resets it (the token is not read again), and the pending constraints are tried in
order. Finished hypotheses are length-normalised like beam search's.

Deviations, stated (each pinned by ``tests/integration/test_constrained_beam_parity.py``):
progress counts the *generated* tokens only (transformers also read the prompt, so a phrase in
the prompt counted as generated); when fewer hypotheses meet the constraints than
``num_return_sequences``, the ones that do come first and the others follow with finish reason
``constraint`` (transformers ranked them together by score, as if they met them); and a
disjunctive constraint's progress is copied, not shared, between candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.scoring.length import LengthPenalty
from decodekit.search.base import Hypothesis, SearchContext, Step, normaliser

_MASKED = -1.0e9


class Constraint:
    """One constraint: a phrase (one token sequence) or alternatives (any one of several)."""

    def __init__(self, options: list[tuple[int, ...]]):
        self.options = options
        self.phrase = len(options) == 1
        self.length = max(len(o) for o in options)

    def next_tokens(self, partial: tuple[int, ...]) -> list[int]:
        """The tokens that continue ``partial`` (in the order the options were given)."""
        out: list[int] = []
        for option in self.options:
            if option[: len(partial)] == partial and len(option) > len(partial) and option[len(partial)] not in out:
                out.append(option[len(partial)])
        return out

    def complete(self, partial: tuple[int, ...]) -> bool:
        return partial in self.options


@dataclass(frozen=True)
class Progress:
    """Which constraints are met (in the order met), which one is in progress (index and the
    tokens matched so far) and which are pending (in the order they will be tried)."""

    met: tuple[int, ...]
    current: tuple[int, tuple[int, ...]] | None
    pending: tuple[int, ...]

    @property
    def done(self) -> bool:
        return not self.pending and self.current is None


def start(constraints: list[Constraint]) -> Progress:
    return Progress((), None, tuple(range(len(constraints))))


def feed(constraints: list[Constraint], progress: Progress, token: int) -> Progress:
    """The progress after one more token."""
    if progress.done:
        return progress
    if progress.current is not None:
        index, partial = progress.current
        if token not in constraints[index].next_tokens(partial):  # reset: back to the end of the queue
            return Progress(progress.met, None, (*progress.pending, index))
        partial = (*partial, token)
        if constraints[index].complete(partial):
            return Progress((*progress.met, index), None, progress.pending)
        return Progress(progress.met, (index, partial), progress.pending)
    for at, index in enumerate(progress.pending):
        if token in constraints[index].next_tokens(()):
            rest = progress.pending[:at] + progress.pending[at + 1 :]
            if constraints[index].complete((token,)):
                return Progress((*progress.met, index), None, rest)
            return Progress(progress.met, (index, (token,)), rest)
    return progress


def replay(constraints: list[Constraint], tokens) -> Progress:
    progress = start(constraints)
    for token in tokens:
        progress = feed(constraints, progress, int(token))
        if progress.done:
            break
    return progress


def advance_tokens(constraints: list[Constraint], progress: Progress) -> list[int]:
    """The tokens that make progress: the next of the constraint in progress, else the first
    of every pending one (duplicates kept, as transformers)."""
    if progress.current is not None:
        index, partial = progress.current
        return constraints[index].next_tokens(partial)
    out: list[int] = []
    for index in progress.pending:
        out.extend(constraints[index].next_tokens(()))
    return out


def bank(constraints: list[Constraint], progress: Progress, longest: int) -> int:
    extra = 0
    if progress.current is not None:
        index, partial = progress.current
        extra = longest - (constraints[index].length - len(partial))
    return len(progress.met) * longest + extra


def parse(force_words_ids) -> list[Constraint]:
    """transformers' ``force_words_ids``: each entry a phrase (token ids) or a list of
    alternatives (lists of token ids)."""
    if not isinstance(force_words_ids, tuple | list) or not force_words_ids:
        raise ConfigError("force_words_ids", force_words_ids, "a non-empty list of phrases (token-id lists) or of alternatives (lists of token-id lists)")
    out = []
    for i, entry in enumerate(force_words_ids):
        if isinstance(entry, tuple | list) and entry and all(v.is_integer(t) for t in entry):
            options = [tuple(int(t) for t in entry)]
        elif isinstance(entry, tuple | list) and entry and all(isinstance(o, tuple | list) and o and all(v.is_integer(t) for t in o) for o in entry):
            options = [tuple(int(t) for t in o) for o in entry]
            for a in options:
                if any(a != b and b[: len(a)] == a for b in options):
                    raise ConfigError(f"force_words_ids[{i}]", entry, "alternatives none of which is a prefix of another")
        else:
            raise ConfigError(f"force_words_ids[{i}]", entry, "a non-empty list of token ids, or a non-empty list of such lists")
        if any(t < 0 for o in options for t in o):
            raise ConfigError(f"force_words_ids[{i}]", entry, "token ids >= 0")
        out.append(Constraint(options))
    return out


@dataclass(frozen=True)
class ConstrainedBeamSearch:
    """Beam search whose hypotheses contain every entry of ``force_words_ids`` (a phrase, or
    one of a list of alternative phrases)."""

    name: ClassVar[str] = "constrained_beam"
    force_words_ids: tuple[tuple[int, ...] | tuple[tuple[int, ...], ...], ...] = ()
    """transformers' form: each entry a phrase (token ids) or a list of alternative phrases."""
    num_beams: int = 4
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def validate(self) -> None:
        parse(self.force_words_ids)
        v.integer("num_beams", self.num_beams, 2, v.MAX_ROWS, "at least 2")
        v.integer("num_return_sequences", self.num_return_sequences, 1, self.num_beams, "at most num_beams")
        v.choice("early_stopping", self.early_stopping, (True, False, "never"))
        LengthPenalty(self.length_penalty).validate()

    def begin(self, context: SearchContext) -> ConstrainedBeamRun:
        return ConstrainedBeamRun(self, context)


class ConstrainedBeamRun:
    scores_are_logprobs = True
    supports_stop_strings = False
    records_top_logprobs = False

    def __init__(self, config: ConstrainedBeamSearch, context: SearchContext):
        self.config, self.context = config, context
        self.constraints = parse(config.force_words_ids)
        for c in self.constraints:
            if context.vocab_size and max(t for o in c.options for t in o) >= context.vocab_size:
                raise ConfigError("force_words_ids", config.force_words_ids, f"token ids below the vocabulary size {context.vocab_size}")
        self.longest = max(c.length for c in self.constraints)
        B, K = context.batch_size, config.num_beams
        self.width = K
        self.eos = set(context.eos_token_ids.tolist())
        self.beam_scores = torch.zeros((B, K))
        self.beam_scores[:, 1:] = _MASKED
        self.sequences = [[[] for _ in range(K)] for _ in range(B)]
        self.logprobs = [[[] for _ in range(K)] for _ in range(B)]
        self.pools: list[list[tuple[float, list[int], list[float]]]] = [[] for _ in range(B)]
        self.finished = [False] * B
        self.penalty = config.length_penalty

    def _add(self, b: int, tokens: list[int], logprobs: list[float], total: float) -> None:
        """transformers' BeamHypotheses.add: keep the ``num_beams`` best by normalised score."""
        pool, K = self.pools[b], self.config.num_beams
        score = total / (len(tokens) ** self.penalty)
        worst = min((s for s, _, _ in pool), default=1e9)
        if len(pool) < K or score > worst:
            pool.append((score, tokens, logprobs))
            if len(pool) > K:
                pool.remove(min(pool, key=lambda h: h[0]))

    def _is_done(self, b: int, best: float, length: int) -> bool:
        pool, early = self.pools[b], self.config.early_stopping
        if len(pool) < self.config.num_beams:
            return False
        if early is True:
            return True
        worst = min(s for s, _, _ in pool)
        if early == "never" and self.penalty > 0:
            return worst >= best / (self.context.max_new_tokens ** self.penalty)
        return worst >= best / (length ** self.penalty)

    def step(self, scores: torch.Tensor, t: int) -> Step:
        B, K = self.context.batch_size, self.width
        V = scores.shape[-1]
        step_scores = scores.float().cpu()
        accumulated = (step_scores + self.beam_scores.view(-1, 1)).view(B, K * V)
        step_scores = step_scores - normaliser(step_scores)[:, None]  # reported: the processed distribution's
        C = max(2, 1 + len(self.eos)) * K
        top, flat = torch.topk(accumulated, C, dim=-1)
        top, flat = top.tolist(), flat.tolist()
        parents, tokens = [], []
        for b in range(B):
            if self.finished[b]:
                parents += [b * K] * K
                tokens += [self.context.pad_token_id] * K
                continue
            chosen = []  # (score, beam, token)
            for rank, (value, index) in enumerate(zip(top[b], flat[b])):
                beam, token = divmod(index, V)
                if token in self.eos:
                    if rank >= K:
                        continue
                    if replay(self.constraints, self.sequences[b][beam]).done:
                        self._add(b, [*self.sequences[b][beam], token], [*self.logprobs[b][beam], float(step_scores[b * K + beam, token])], value)
                else:
                    chosen.append((value, beam, token))
                if len(chosen) == K:
                    break
            chosen = self._with_progress(b, chosen, accumulated[b].view(K, V))
            self.finished[b] = self.finished[b] or self._is_done(b, top[b][0], t + 1)
            sequences, logprobs = [], []
            for _, beam, token in chosen:
                sequences.append([*self.sequences[b][beam], token])
                logprobs.append([*self.logprobs[b][beam], float(step_scores[b * K + beam, token])])
                parents.append(b * K + beam)
                tokens.append(token)
            self.sequences[b], self.logprobs[b] = sequences, logprobs
            self.beam_scores[b] = torch.tensor([value for value, _, _ in chosen])
        device = self.context.device
        if t + 1 >= self.context.max_new_tokens:
            done = True
        else:
            done = all(self.finished)
        return Step(torch.tensor(parents, device=device), torch.tensor(tokens, device=device), torch.tensor(done, device=device))

    def _with_progress(self, b: int, chosen: list[tuple[float, int, int]], accumulated: torch.Tensor) -> list[tuple[float, int, int]]:
        """Add each beam's constraint-advancing continuations and pick K round-robin by bank."""
        K, cs = self.width, self.constraints
        seen = [(*self.sequences[b][beam], token) for _, beam, token in chosen]
        progress = [replay(cs, s) for s in seen]
        extra, extra_progress = [], []
        for beam in range(K):
            state = replay(cs, self.sequences[b][beam])
            if state.done:
                continue
            for token in advance_tokens(cs, state):
                sequence = (*self.sequences[b][beam], token)
                if sequence not in seen:
                    seen.append(sequence)
                    extra.append((float(accumulated[beam, token]), beam, token))
                    extra_progress.append(feed(cs, state, token))
        if not extra:
            return chosen
        candidates, states = chosen + extra, progress + extra_progress
        banks = torch.tensor([bank(cs, s, self.longest) for s in states])
        values = torch.tensor([value for value, _, _ in candidates])
        order = (banks * 100 + values).sort(descending=True).indices
        # round-robin across banks: the first of every bank, then the second of every bank, ...
        rounds, previous, count = [], None, -1
        for index in order.tolist():
            count = count + 1 if banks[index] == previous else 0
            previous = banks[index]
            rounds.append(count)
        picked = [order[i] for i in sorted(range(len(rounds)), key=lambda i: rounds[i])][:K]
        return [candidates[int(i)] for i in picked]

    def stop_rows(self, rows):
        raise NotImplementedError("constrained beam search does not take stop strings")

    def current_best(self, t: int) -> list[list[int]]:
        return [self.sequences[b][0] for b in range(self.context.batch_size)]

    def finish(self) -> list[list[Hypothesis]]:
        out = []
        n = self.config.num_return_sequences
        for b in range(self.context.batch_size):
            if not self.finished[b]:
                for beam in range(self.width):
                    tokens = self.sequences[b][beam]
                    if replay(self.constraints, tokens).done and float(self.beam_scores[b, beam]) > _MASKED / 2:
                        self._add(b, tokens, self.logprobs[b][beam], float(self.beam_scores[b, beam]))
            met = sorted(self.pools[b], key=lambda h: -h[0])
            hyps = [self._hypothesis(h, met=True) for h in met[:n]]
            if len(hyps) < n and not self.finished[b]:  # the best beams that did not meet them, labelled
                rest = []
                for beam in range(self.width):
                    tokens = self.sequences[b][beam]
                    total = float(self.beam_scores[b, beam])
                    if tokens and total > _MASKED / 2 and not replay(self.constraints, tokens).done:
                        rest.append((total / (len(tokens) ** self.penalty), tokens, self.logprobs[b][beam]))
                hyps += [self._hypothesis(h, met=False) for h in sorted(rest, key=lambda h: -h[0])[: n - len(hyps)]]
            out.append(hyps)
        return out

    def _hypothesis(self, h, met: bool) -> Hypothesis:
        score, tokens, logprobs = h
        reason = "constraint" if not met else ("eos" if tokens and tokens[-1] in self.eos else "length")
        return Hypothesis(list(tokens), list(logprobs), float(sum(logprobs)), float(score), reason)
