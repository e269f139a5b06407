"""A pool of beam searches decided together: continuous batching for beam search and Diverse
Beam Search.

Beam-search (or Diverse Beam Search) requests that arrive separately (one per call, admitted
at different steps) and share a config, an EOS set and options (``max_new_tokens`` apart) join
one :class:`BeamPool`: its run (:class:`~decodekit.search.beam.BeamSearchRun` or
:class:`~decodekit.search.diverse.DiverseBeamSearchRun`), in per-prompt mode
(:mod:`decodekit.search.per_prompt`), keeps each prompt's own step and length limit, so one set of ``(prompts, K, ...)`` tensor ops
decides every prompt's beams, whatever its arrival time, prompt or limit. A request is
delivered the step its n-best can no longer change (exactly what it would return alone: every
operation is per prompt) and its ``K`` rows leave the model state then.

Searches join with no processors but a minimum length and the :data:`SEQUENCE_PROCESSORS`
(no re-scoring, coverage penalty, history-reading diversity or time limit; see :attr:`~decodekit.engine.group.PlainGroup.beam_poolable`);
anything else stays a group of its own.
"""

from __future__ import annotations

import dataclasses

import torch

from decodekit.engine.group import PlainGroup
from decodekit.engine.request import EngineEvent, RequestHandle, RequestOutput
from decodekit.errors import NumericalError
from decodekit.logits.base import ProcessorList
from decodekit.logits.penalties import (
    BadWords,
    MinNewTokens,
    NoRepeatNGram,
    RepetitionPenalty,
    SuppressTokens,
)

SEQUENCE_PROCESSORS = (RepetitionPenalty, NoRepeatNGram, BadWords, SuppressTokens)
"""Processors that read only each row's tokens (padding ``-1`` ignored), not its length or
step: pooled rows keep their tokens right-aligned in one history, so these see what they see
alone. A minimum length is applied by the pool itself, per prompt."""


def beam_pool_key(group: PlainGroup) -> tuple:
    """What the requests of one pool share: the strategy config, EOS set and options but
    ``max_new_tokens``."""
    return (type(group.strategy).__name__, group.strategy, group.eos, dataclasses.replace(group.options, max_new_tokens=1))


@dataclasses.dataclass
class _Member:
    handle: RequestHandle
    first_row: int  # its first row in the call it came with (errors name it)
    prompt_length: int = 0


class BeamPool:
    """Beam searches of separately arrived requests, prompt-major (``width`` rows each)."""

    free: tuple[int, ...] = ()
    attention = None

    def __init__(self, key: tuple):
        self.key = key
        self.run = None
        self.width = 0
        self.members: list[_Member] = []
        self.error: BaseException | None = None
        self._parents: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self.processors = ProcessorList()
        self.history: torch.Tensor | None = None  # (rows, width) each row's tokens, right-aligned; -1 before

    @property
    def handles(self) -> list[RequestHandle]:
        return [m.handle for m in self.members]

    @property
    def rows(self) -> int:
        return len(self.members) * self.width

    def add(self, group: PlainGroup) -> None:
        """Take over ``group``'s requests (prefilled and fanned out, their rows appended to
        this pool's in the model state)."""
        run = group.search
        run.per_prompt()
        if self.run is None:
            self.run, self.width = run, run.width
            self.eos = list(group.eos)
            self.min_new = group.options.min_new_tokens if self.eos else 0
            self.processors = ProcessorList([p for p in group.processors.processors if not isinstance(p, MinNewTokens)])
        else:
            self.run.join(run)
        self.members += [_Member(h, i * group.width, len(h.request.prompt)) for i, h in enumerate(group.handles)]
        if len(self.processors):
            rows = group.history[:, : group.prompt_length]
            if self.history is None:
                self.history = rows
            else:
                width = max(self.history.shape[1], rows.shape[1])
                self.history = torch.cat([_left_pad(self.history, width), _left_pad(rows, width)])

    # -- one step ---------------------------------------------------------------------------

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Decide every prompt's beams from ``(rows, vocab)`` logits. Returns ``(2 * prompts,)``
        bool flags: each prompt's non-finite logits, then whether its n-best is final."""
        B, K = len(self.members), self.width
        self.nonfinite = ~torch.isfinite(logits.amax(-1))
        scores = logits.log_softmax(-1)
        if self.min_new and min(self.run.prompt_steps) < self.min_new:  # as MinNewTokens: no EOS before it
            early = torch.tensor([n < self.min_new for n in self.run.prompt_steps], device=scores.device).repeat_interleave(K)
            scores[:, self.eos] = scores[:, self.eos].masked_fill(early[:, None], float("-inf"))
        if len(self.processors):
            scores = self.processors(self.history, scores)
        step = self.run.step(scores, 0)
        self._parents, self._tokens = step.parents, step.tokens
        if self.history is not None:
            self.history = torch.cat([self.history.index_select(0, step.parents), step.tokens[:, None]], 1)
        return torch.cat([self.nonfinite.view(B, K).any(-1), self.run.prompt_done])

    def settle(self, values: list[bool]) -> list[int] | None:
        """Stream, deliver the prompts that finished (or whose logits were not finite:
        :class:`NumericalError` for that request alone) and drop their rows. Returns None
        (every row goes on) or the local rows that do."""
        B, K = len(self.members), self.width
        bad, done = values[:B], values[B:]
        run = self.run
        if any(m.handle.request.stream for m in self.members):
            for member, tokens, n in zip(self.members, run.current_best(0), run.prompt_steps):
                if member.handle.request.stream:
                    member.handle._emit(EngineEvent("best", 0, n - 1, tuple(tokens)))
        finished = [b for b in range(B) if done[b] and not bad[b] and not self.members[b].handle.done]
        outputs = dict(zip(finished, run.finish(finished))) if finished else {}
        keep = []
        for b, member in enumerate(self.members):
            if bad[b]:
                row = int(self.nonfinite.view(B, K)[b].nonzero()[0])
                member.handle._finish(None, NumericalError(step=max(run.prompt_steps[b] - 1, 0), row=member.first_row + row))
            elif member.handle.done:  # aborted
                pass
            elif b in outputs:
                member.handle._finish(RequestOutput(outputs[b], None, (), True))
            else:
                keep.append(b)
        if len(keep) == B:
            return None
        return self._keep(keep, renumber=True)

    def _keep(self, keep: list[int], renumber: bool = False) -> list[int]:
        """Keep these prompts; the local rows that stay. ``renumber``: this step's parents
        and tokens follow (parents into the rows that stay)."""
        B, K = len(self.members), self.width
        device = self.run.running_scores.device
        if renumber and keep:
            index = torch.tensor(keep, dtype=torch.long, device=device)
            old = (index * K)[:, None]
            new = (torch.arange(len(keep), device=device) * K)[:, None]
            self._parents = (self._parents.view(B, K).index_select(0, index) - old + new).view(-1)
            self._tokens = self._tokens.view(B, K).index_select(0, index).view(-1)
        self.members = [self.members[b] for b in keep]
        rows = [b * K + k for b in keep for k in range(K)]
        if keep:
            self.run.keep(keep)
            if self.history is not None:  # only as wide as the longest row left
                needed = max(m.prompt_length + n for m, n in zip(self.members, self.run.prompt_steps))
                self.history = self.history.index_select(0, torch.tensor(rows, dtype=torch.long, device=device))[:, -needed:]
        return rows

    def live_rows(self) -> list[int] | None:
        """The rows of prompts not aborted (None: all of them)."""
        live = [b for b, m in enumerate(self.members) if not m.handle.done]
        return None if len(live) == len(self.members) else [b * self.width + k for b in live for k in range(self.width)]

    def keep_rows(self, rows: list[int]) -> None:
        """Keep these rows (whole prompts, as :meth:`live_rows` gave them)."""
        self._keep(sorted({r // self.width for r in rows}))

    def keep_parents(self) -> torch.Tensor | None:
        return self._parents

    def fed(self) -> int:
        """Generated tokens in the cache, the most of any prompt."""
        return max(self.run.prompt_steps) if self.members else 0

    def next_tokens(self) -> torch.Tensor:
        return self._tokens

    def outputs(self) -> list[RequestOutput]:  # a pool delivers as its prompts finish
        return []


def _left_pad(history: torch.Tensor, width: int) -> torch.Tensor:
    """Rows right-aligned in ``width`` columns, ``-1`` before."""
    if history.shape[1] == width:
        return history
    return torch.cat([history.new_full((history.shape[0], width - history.shape[1]), -1), history], 1)
