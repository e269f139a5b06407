"""A constraint followed through speculative chain drafts.

Per verification step, for every live row and every block position (the row's tokens so far,
then the draft tokens one by one) the constraint's mask is computed exactly as plain
constrained decoding computes it at that output position: the cursor's allowed tokens for the
position's remaining budget, EOS allowed exactly where the cursor is accepting, only EOS on the
budget's last token when accepting, a row left no allowed token of finite score ends with EOS
(``_STUCK``). The cursor consumes the draft tokens the constraint allows (a disallowed one
ends the chain: it can never be accepted) and afterwards rolls back to what was accepted, then
consumes the final token. Chains only: tree drafts would need one cursor copy per node.
"""

from __future__ import annotations

import torch

from decodekit.constraints.processor import _STUCK, ConstraintProcessor


class ChainConstraint:
    """The cursors of ``rows`` rows under ``processor``'s compiled constraint."""

    def __init__(self, processor: ConstraintProcessor, rows: int, max_new_tokens: int):
        self.processor, self.max_new = processor, max_new_tokens
        self.cursor = processor.compiled.cursor(rows)
        self.rows = rows
        self.eos = torch.tensor(processor.eos, dtype=torch.long)
        self.consumed: list[int] = []

    def _mask(self, scores: torch.Tensor, rows: list[int], produced: list[int]) -> torch.Tensor:
        """``scores`` ``(len(rows), V)`` masked for the rows' next position; ``produced[i]``:
        tokens row ``rows[i]`` has produced before that position."""
        count, vocab = scores.shape
        device = scores.device
        remaining = [self.max_new - p for p in produced]
        full = torch.zeros((self.rows, vocab), dtype=torch.bool)
        for budget in sorted(set(remaining)):
            mask = torch.zeros((self.rows, vocab), dtype=torch.bool)
            self.cursor.allowed(mask, budget)
            chosen = [r for r, b in zip(rows, remaining) if b == budget]
            full[chosen] = mask[chosen]
        accepting = self.cursor.is_accepting().cpu()
        allowed = full[rows]
        accept = accepting[rows]
        last = torch.tensor([b <= 1 for b in remaining]) & accept
        allowed[last] = False
        allowed[:, self.eos] = accept[:, None]
        allowed = allowed.to(device)
        masked = torch.where(allowed, scores, -torch.inf)
        stuck = masked.amax(-1) == -torch.inf
        first = int(self.eos[0])
        masked[:, first] = torch.where(stuck, torch.full_like(masked[:, first], _STUCK), masked[:, first])
        return masked

    def first(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask the prefill's ``(rows, V)`` logits (every row at output position 0)."""
        return self._mask(logits, list(range(self.rows)), [0] * self.rows)

    def consume(self, rows: list[int], tokens: list[int]) -> None:
        """Row ``rows[i]`` took ``tokens[i]`` (not consumed if it is EOS: the row ends)."""
        take = torch.zeros(self.rows, dtype=torch.bool)
        full = torch.zeros(self.rows, dtype=torch.long)
        for r, t in zip(rows, tokens):
            if t not in self.processor.eos:
                take[r], full[r] = True, t
        if bool(take.any()):
            self.cursor.advance(full, take)

    def block(self, logits: torch.Tensor, rows: list[int], produced: list[int], inputs: torch.Tensor, valid: torch.Tensor):
        """Mask a chain block's ``(rows, n, V)`` logits position by position, consuming the
        allowed draft tokens. Returns the masked logits and ``valid`` with disallowed draft
        tokens (and everything after them) invalid."""
        count, n, _ = logits.shape
        masked = logits.clone()
        valid = valid.clone()
        tokens = inputs.tolist()
        self.consumed = [0] * count
        going = [True] * count
        for j in range(n):
            masked[:, j] = self._mask(logits[:, j], rows, [p + j for p in produced])
            if j + 1 == n:
                break
            step = masked[:, j].isfinite()
            advance_rows, advance_tokens = [], []
            for i, r in enumerate(rows):
                token = tokens[i][j + 1]
                ok = going[i] and bool(valid[i, j + 1]) and bool(step[i, token]) and token not in self.processor.eos
                going[i] = ok
                if ok:
                    advance_rows.append(r)
                    advance_tokens.append(token)
                    self.consumed[i] += 1
                else:
                    valid[i, j + 1 :] = False
            if advance_rows:
                self.consume(advance_rows, advance_tokens)
        return masked, valid

    def keep(self, rows: list[int], accepted: list[int], finals: list[int | None]) -> None:
        """After verification: roll each row back to its ``accepted`` draft tokens, then
        consume its final (recovered or bonus) token when it has one."""
        back = torch.zeros(self.rows, dtype=torch.long)
        for i, r in enumerate(rows):
            back[r] = self.consumed[i] - accepted[i]
        if bool((back > 0).any()):
            self.cursor.rollback(back)
        keep_rows = [r for r, f in zip(rows, finals) if f is not None]
        self.consume(keep_rows, [f for f in finals if f is not None])


class RoutedConstraints:
    """The constraints of a speculative run that requests join: each request's own
    :class:`ChainConstraint` over its rows (the run's row ids mapped to the constraint's own
    rows); rows without a constraint are left as they are. The same calls as
    :class:`ChainConstraint`, with the run's row ids."""

    def __init__(self):
        self.parts: list[tuple[ChainConstraint, dict[int, int]]] = []
        self.consumed: list[int] = []

    def add(self, processor: ConstraintProcessor, rows: list[int], max_new_tokens: int) -> None:
        """``rows`` (new run rows) follow ``processor``'s constraint with a budget of ``max_new_tokens``."""
        self.parts.append((ChainConstraint(processor, len(rows), max_new_tokens), {r: i for i, r in enumerate(rows)}))

    def forget(self, rows: list[int]) -> None:
        """Delivered rows: their constraint forgets them (a request's whole constraint goes
        once all its rows have)."""
        gone = set(rows)
        for _, local in self.parts:
            for r in gone & local.keys():
                del local[r]
        self.parts = [(chain, local) for chain, local in self.parts if local]

    def _split(self, rows: list[int]):
        """Per constraint: the positions in ``rows`` of its rows, and their own row indices."""
        for chain, local in self.parts:
            at = [i for i, r in enumerate(rows) if r in local]
            if at:
                yield chain, at, [local[rows[i]] for i in at]

    def first(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Mask the prefill's ``(rows, V)`` logits of new rows ``rows`` (output position 0)."""
        logits = logits.clone()
        for chain, at, own in self._split(rows):
            index = torch.tensor(at, dtype=torch.long, device=logits.device)
            logits[index] = chain._mask(logits.index_select(0, index), own, [0] * len(own))
        return logits

    def consume(self, rows: list[int], tokens: list[int]) -> None:
        for chain, at, own in self._split(rows):
            chain.consume(own, [tokens[i] for i in at])

    def block(self, logits: torch.Tensor, rows: list[int], produced: list[int], inputs: torch.Tensor, valid: torch.Tensor):
        masked, valid = logits.clone(), valid.clone()
        self.consumed = [0] * len(rows)
        for chain, at, own in self._split(rows):
            index = torch.tensor(at, dtype=torch.long, device=logits.device)
            part, part_valid = chain.block(logits.index_select(0, index), own, [produced[i] for i in at],
                                           inputs.index_select(0, index.to(inputs.device)), valid.index_select(0, index.to(valid.device)))
            masked[index], valid[index.to(valid.device)] = part, part_valid
            for i, consumed in zip(at, chain.consumed):
                self.consumed[i] = consumed
        return masked, valid

    def keep(self, rows: list[int], accepted: list[int], finals: list[int | None]) -> None:
        for chain, at, own in self._split(rows):
            chain.keep(own, [accepted[i] for i in at], [finals[i] for i in at])
