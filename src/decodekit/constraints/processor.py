"""The constraint as an engine processor: masks each step's scores and follows the rows.

:class:`ConstraintProcessor` is a :class:`~decodekit.logits.base.StatefulProcessor`, so it
works with every strategy that moves rows by ``advance(parents, tokens)``: greedy and sampling
(``parents`` None), beam search and Diverse Beam Search (``parents`` reorders and forks rows).
Per step it

1. asks the cursor for the allowed content tokens of every row (one ``(rows, vocab)`` bool
   mask, built with tensor ops);
2. allows EOS exactly where the cursor is accepting; on the last step of the length budget an
   accepting row may only take EOS, so outputs that can end, end;
3. sets every other score of a live row to ``-inf``.

Rows are LIVE (following the constraint), DONE (took EOS; later tokens are the search's
padding) or DEAD (took a token that was masked, which only a row whose every candidate was
``-inf`` does, e.g. a spare beam). DONE and DEAD rows are left unmasked: their scores no
longer matter and masking them could turn a whole row to ``-inf`` (NaN probabilities).

Honesty: :meth:`review` re-checks every finished output on the host with a fresh cursor and
relabels it ``constraint`` when it does not satisfy the constraint, so a result never reports
an invalid output as a success, whatever the search did.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from decodekit.constraints.base import CompiledConstraint
from decodekit.errors import ConfigError
from decodekit.results import GeneratedSequence

LIVE, DONE, DEAD = 0, 1, 2
_STUCK = -1.0e30
"""Score given to EOS in a live row none of whose allowed tokens has a finite score (another
processor banned them all): the row ends at once, is effectively never preferred by beam
search, and :meth:`ConstraintProcessor.review` labels it ``constraint``."""


class ConstraintProcessor:
    """Masks scores to a compiled constraint and tracks one cursor position per row.

    ``eos_token_ids``: the tokens that end an output (at least one). ``max_new_tokens``: the
    length budget (None: unbounded), used to keep rows on outputs that can still end in time.
    """

    changes_argmax = True

    def __init__(
        self, compiled: CompiledConstraint, eos_token_ids: tuple[int, ...], max_new_tokens: int | None = None, min_new_tokens: int = 0
    ):
        if not eos_token_ids:
            raise ConfigError("eos_token_ids", eos_token_ids, "at least one EOS token: a constrained output ends with EOS once complete")
        self.compiled, self.eos, self.max_new_tokens = compiled, tuple(int(e) for e in eos_token_ids), max_new_tokens
        self.min_new_tokens = int(min_new_tokens)
        self.eos_index = torch.tensor(self.eos, dtype=torch.long)
        self.cursor = compiled.cursor(0)
        # host bookkeeping per row (numpy: a few tiny ops a step, no torch dispatch)
        self.status = np.zeros(0, dtype=np.int8)
        self.ended = np.zeros(0, dtype=np.int64)  # (rows,) step at which a row ended
        self.last_allowed: torch.Tensor | None = None
        self.step = 0

    def reset(self, rows: int) -> None:
        """Start ``rows`` rows at the start of the constraint (mutates)."""
        self.cursor = self.compiled.cursor(rows)
        self.status = np.zeros(rows, dtype=np.int8)
        self.ended = np.zeros(rows, dtype=np.int64)
        self.last_allowed, self.step = None, 0

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores``: ``(rows, vocab)``; returns them masked (a new tensor). Four full-width
        tensor ops: the mask, the cursor's fill, the masking, the stuck-row check."""
        rows, vocab = scores.shape
        device = scores.device
        remaining = None if self.max_new_tokens is None else self.max_new_tokens - self.step
        allowed = torch.zeros((rows, vocab), dtype=torch.bool, device=device)
        self.cursor.allowed(allowed, remaining)
        accepting = self.cursor.is_accepting().cpu()
        if remaining is not None and remaining <= 1 and bool(accepting.any()):
            # the last token of the budget: an output that can end must end now
            allowed[accepting.to(device)] = False
        allowed[:, self.eos_index.to(device)] = accepting.to(device)[:, None]
        finished = self.status != LIVE  # host data: no device sync
        if finished.any():
            allowed[torch.from_numpy(finished).to(device)] = True  # DONE/DEAD rows: left as they are
        self.last_allowed = allowed
        masked = torch.where(allowed, scores, -torch.inf)
        # a row with no allowed token of finite score ends at once (see _STUCK)
        stuck = masked.amax(-1) == -torch.inf
        first_eos = self.eos[0]
        masked[:, first_eos] = torch.where(stuck, _STUCK, masked[:, first_eos])
        return masked

    def advance(self, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """New row i continues old row ``parents[i]`` (identity if None) with ``tokens[i]``."""
        if self.last_allowed is None:
            raise RuntimeError("ConstraintProcessor.advance before any step was masked")
        rows = parents if parents is not None else torch.arange(tokens.shape[0], device=tokens.device)
        took_allowed = self.last_allowed[rows, tokens].cpu().numpy()
        if parents is not None:
            parents_host = parents.cpu().numpy()
            self.cursor.fork(parents)
            self.status, self.ended = self.status[parents_host], self.ended[parents_host]
        is_eos = np.isin(tokens.cpu().numpy(), self.eos)
        live = self.status == LIVE
        self.cursor.advance(tokens, torch.from_numpy(live & took_allowed & ~is_eos).to(tokens.device))
        self.ended = np.where(live, self.step, self.ended)
        status = np.where(live & is_eos, DONE, self.status)
        self.status = np.where(live & ~took_allowed, DEAD, status).astype(np.int8)
        self.last_allowed = None
        self.step += 1

    def rollback(self, count: int) -> None:
        """Undo the last ``count`` steps of every row (speculation: rejected draft tokens).
        Rows that ended inside the undone steps are live again; mutates."""
        count = min(int(count), self.step)
        start = self.step - count  # the first undone step
        # a row that ended at step e consumed its tokens of steps < e only
        ended = np.where(self.status == LIVE, self.step, self.ended)
        self.cursor.rollback(torch.from_numpy(np.maximum(ended - start, 0)))
        self.status = np.where(ended >= start, LIVE, self.status).astype(np.int8)
        self.step = start

    def review(self, sequence: GeneratedSequence) -> GeneratedSequence:
        """``sequence`` checked against the constraint: ``finish_reason`` becomes
        ``constraint`` unless its tokens (without the final EOS) satisfy it; the constraint's
        report goes into ``sequence.constraint``."""
        ids = list(sequence.token_ids)
        if ids and ids[-1] in self.eos:
            ids = ids[:-1]
        if any(i in self.eos for i in ids):
            valid, info = False, {}
        else:
            verdict = self.compiled.check(ids)
            valid, info = verdict.valid, verdict.info
        reason = sequence.finish_reason if valid else "constraint"
        report = {"name": self.compiled.name, "valid": valid, **info}
        if valid and sequence.finish_reason == "eos" and 0 < self.min_new_tokens >= len(sequence.token_ids):
            # the constraint ended the output before min_new_tokens (EOS was its only way on):
            # the output is valid for the constraint but does not meet the options
            reason = "constraint"
            report["min_new_tokens"] = False
        return dataclasses.replace(sequence, finish_reason=reason, constraint=report)
