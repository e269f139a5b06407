"""The one proposer protocol of speculative decoding, and the words it uses.

A *draft* is a tree (a chain is the special case) of guessed tokens that continue each row.
The target model scores the row's last token and the whole draft in one forward; then

- **accepted** tokens are the draft tokens on the longest root-to-node path the target agrees
  with (greedy: each is the target's argmax; sampling: each passed the speculative sampling
  test of Leviathan et al., 2023 / Chen et al., 2023);
- the **recovered** token is the target's own token at the first disagreement (greedy: its
  argmax; sampling: a draw from the normalised residual distribution);
- the **bonus** token is the target's token after a fully accepted path (there is nothing to
  disagree with, so it is drawn from the target's distribution as is).

Every step therefore yields ``accepted + 1`` tokens for one target forward. The same words are
used in vLLM's ``rejection_sampler.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

Warp = Callable[[torch.Tensor], torch.Tensor]
"""``(rows, vocab)`` logits -> ``(rows, vocab)`` warped logits (temperature, top-k, ...)."""


@dataclass(frozen=True)
class Draft:
    """Draft tokens for a batch of rows, padded to ``n`` nodes per row.

    ``tokens``: ``(rows, n)`` int64. ``parents``: ``(rows, n)`` int64, the index of each node's
    parent node, ``-1`` for a node that continues the row's last token; parents come before
    their children and siblings carry distinct tokens. ``valid``: ``(rows, n)`` bool, False for
    padding. ``probs``: ``(rows, n, vocab)`` float32, the distribution each node's token was
    drawn from (a stochastic draft model), or None for deterministic drafts (n-gram, suffix
    tree, recycling), which the verifier treats as one-hot. Stochastic siblings share their
    parent's distribution, are drawn from it without replacement and come in draw order
    (recursive rejection sampling tries them in that order).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor
    probs: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    @staticmethod
    def empty(rows: int, device: torch.device | str = "cpu") -> Draft:
        none = torch.zeros((rows, 0), dtype=torch.long, device=device)
        return Draft(none, none.clone(), none.bool())

    @staticmethod
    def from_lists(
        tokens: list[list[int]], parents: list[list[int]], device: torch.device | str = "cpu"
    ) -> Draft:
        """Pack per-row node lists (possibly of different lengths) into a padded draft."""
        rows, n = len(tokens), max((len(t) for t in tokens), default=0)

        def padded(lists, fill, dtype) -> torch.Tensor:  # one tensor from host lists: cheaper than row writes
            return torch.tensor([list(x) + [fill] * (n - len(x)) for x in lists], dtype=dtype).view(rows, n).to(device)

        return Draft(padded(tokens, 0, torch.long), padded(parents, -1, torch.long), padded([[True] * len(t) for t in tokens], False, torch.bool))


def chain_parents(length: int) -> list[int]:
    """Parent list of a chain draft: ``[-1, 0, 1, ..., length - 2]``."""
    return list(range(-1, length - 1))


@dataclass(frozen=True)
class SpeculationContext:
    """What a proposer sees for the live rows of one step.

    ``rows``: ids of the live rows (stable over the call; rows that finished are gone).
    ``sequences``: each live row's tokens so far, prompt + generated (its last token is the
    one the target has not consumed yet). Read-only: the loop owns these lists.
    ``limits``: the most draft tokens on any path that can still be used per row (fewer than
    the tokens left to generate).
    ``warps``: each live row's sampler (None: greedy), for proposers that sample their drafts
    (a draft model); None: the run's own for every row.
    """

    rows: list[int]
    sequences: list[list[int]]
    limits: list[int]
    warps: list | None = None


@dataclass(frozen=True)
class Verification:
    """What the target said about the last draft, for :meth:`Proposer.observe`.

    ``rows``: live row ids, as in the context the draft came from. ``inputs``: ``(rows, n + 1)``
    the block the target scored (the row's last token, then the draft nodes). ``parents``:
    ``(rows, n + 1)`` block parents (``-1`` for the last token). ``valid``: ``(rows, n + 1)``.
    ``logits``: ``(rows, n + 1, vocab)`` target logits after each block token.
    ``accepted``: per row, the number of accepted draft tokens. ``emitted``: per row, the
    tokens appended to the sequence this step (accepted, then recovered or bonus; cut at EOS
    or the length limit).
    """

    rows: list[int]
    inputs: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor
    logits: torch.Tensor
    accepted: list[int]
    emitted: list[list[int]]


class Proposer(Protocol):
    """Guesses continuations the target then verifies. One signature for every proposer.

    Lifecycle of one decoding call: :meth:`begin` with every row's prompt, then per step
    :meth:`propose` and :meth:`observe`, then :meth:`finish` with every row's output. State
    that outlives a call (a global suffix tree, a successor matrix) stays on the proposer.

    A proposer whose class sets ``joins = True`` also takes rows in and out of a running call
    (continuous batching): ``join(rows, prompts, generators)`` starts rows with ids new to
    the call, and ``leave(rows, outputs)`` (optional for any proposer) ends rows that
    finished, before :meth:`finish`. Its drafts must not change what a row emits (they are
    deterministic), so a joined row's tokens are those it would have alone.
    """

    name: str

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        """Start a call: row ``i`` begins with ``prompts[i]``. ``warp`` is None for greedy
        decoding, else the sampler's warper (a stochastic draft model samples through it).
        ``generators[i]``: row ``i``'s random generator (rows of one prompt share it; empty:
        unseeded), so a row's draws never depend on the other rows."""
        ...

    def propose(self, context: SpeculationContext) -> Draft:
        """A draft for every live row (rows may get no valid node)."""
        ...

    def observe(self, verification: Verification) -> None:
        """Learn from what the target accepted (and, for recycling, from all its logits)."""
        ...

    def finish(self, outputs: list[list[int]]) -> None:
        """End the call; ``outputs[i]`` are row ``i``'s generated tokens."""
        ...
