"""Recursive Speculative Decoding with constant branching factors (RSD-C; Jeon et al., 2024,
"Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without
Replacement", arXiv 2402.14160).

**Drafting.** A node at depth ``d`` of the draft tree gets ``widths[d]`` children drawn
*without replacement* from the draft model's distribution ``q`` after the node's path, by the
Gumbel-top-k trick: the ``w`` largest of ``log q + G`` (``G`` i.i.d. Gumbel(0, 1)), in
decreasing order, are distributed as ``w`` draws one after another, each from ``q`` without
the tokens already drawn, renormalised (Vieira, 2014; Kool et al., 2019). Siblings are
therefore distinct, and the tree covers more of ``q`` than independent draws would.

**Verification** (recursive rejection sampling) at a node with target distribution ``p`` and
children ``x_1, ..., x_w`` drawn in that order from ``q``:

1. try ``x_1``: accept it with probability ``min(1, p(x_1) / q(x_1))``;
2. on rejection, ``p <- norm(max(0, p - q))`` and ``q <- q`` without ``x_1``, renormalised
   (the distribution ``x_2`` was drawn from); try ``x_2`` against these, and so on;
3. when every child is rejected, the recovered token is drawn from the last ``p``.

Why it is exact: step ``i`` is one speculative sampling test (Leviathan et al., 2023) whose
"draw from the residual" is the rest of the recursion. By induction the rest emits a token
distributed as its own target ``norm(max(0, p - q))``, whatever ``x_i`` was (``x_{i+1}`` is
drawn from ``q`` without ``x_1..x_i``, which is all the induction needs), so the emitted token
is distributed exactly as ``p``. With one child this is plain speculative sampling; trying
only the first ``s`` children of a without-replacement draw is exact as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.search.base import race


@dataclass(frozen=True)
class TreeLayout:
    """The fixed breadth-first shape of an RSD-C draft tree with ``widths[d]`` children per node
    at depth ``d``. Level ``l`` (the nodes at depth ``l``, 0 for the root's children) holds
    draft nodes ``starts[l] .. starts[l + 1] - 1``; the children of one node are consecutive,
    in draw order. ``parents``: ``(nodes,)`` draft index of each node's parent (-1: the root,
    the row's last token); ``depth``: ``(nodes,)`` each node's level."""

    widths: tuple[int, ...]
    starts: tuple[int, ...]
    parents: torch.Tensor
    depth: torch.Tensor

    @staticmethod
    def of(widths: tuple[int, ...]) -> TreeLayout:
        starts, parents, depth, level = [0], [], [], 1
        for d, width in enumerate(widths):
            for i in range(level * width):  # node i of level d; its parent is node i // width
                parents.append(-1 if d == 0 else starts[d - 1] + i // width)
                depth.append(d)
            level *= width
            starts.append(starts[-1] + level)
        return TreeLayout(
            tuple(widths),
            tuple(starts),
            torch.tensor(parents, dtype=torch.long),
            torch.tensor(depth, dtype=torch.long),
        )

    def level(self, d: int) -> slice:
        """Draft indices of the nodes at depth ``d``."""
        return slice(self.starts[d], self.starts[d + 1])

    def noise_slots(self) -> tuple[list[slice], tuple[int, int]]:
        """Where the random numbers of the nodes above each level lie when a sampled tree
        takes Gumbel noise (a vocabulary's worth per node) for the nodes with several
        children and one U[0, 1) number for those with one: per level ``d``, the slice of
        those nodes (the root for ``d = 0``) in their kind's numbers; and how many nodes of
        each kind a whole tree has."""
        slots, counts = [], [0, 0]
        for d, width in enumerate(self.widths):
            above = 1 if d == 0 else self.starts[d] - self.starts[d - 1]
            kind = 0 if width > 1 else 1
            slots.append(slice(counts[kind], counts[kind] + above))
            counts[kind] += above
        return slots, (counts[0], counts[1])


def gumbel_noise(uniform: torch.Tensor) -> torch.Tensor:
    """U[0, 1) numbers -> Gumbel(0, 1) numbers, ``-log(-log u)``. Subtle: ``u = 0`` (one float32
    draw in 2**24) would give ``-inf`` and exclude its token outright; it is clamped instead."""
    return -torch.log(-torch.log(uniform.clamp(min=1e-38)))


def without_replacement(
    probs: torch.Tensor, gumbel: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``width`` tokens drawn without replacement from each ``(..., V)`` distribution ``probs``
    (Gumbel-top-k with the ``(..., V)`` Gumbel noise ``gumbel``), in draw order. Returns the
    ``(..., width)`` tokens and ``(..., width)`` bool, False where the distribution had fewer
    than ``width`` tokens of positive probability (those slots hold arbitrary tokens)."""
    top = (probs.log() + gumbel).topk(width, dim=-1)
    return top.indices, top.values > -torch.inf


def rejection_chain(
    p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, tried: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tests of recursive rejection sampling (module docstring), as if every tried child
    were rejected. ``p``: ``(rows, V)`` target probabilities; ``q``: ``(rows, V)`` the draft
    distribution the children were drawn from; ``tokens``: ``(rows, s)`` children in draw order;
    ``tried``: ``(rows, s)`` bool, the children to try (a prefix of each row's children).

    Returns ``(rows, s)`` ``target`` and ``draft``: ``p_i(x_i)`` and ``q_i(x_i)`` of child ``i``
    under the distributions it is tested against (accepted with probability
    ``min(1, target / draft)``), and the ``(rows, V)`` residual the recovered token is drawn
    from when every tried child is rejected (``p`` itself where nothing is tried)."""
    targets, drafts = [], []
    for i in range(tokens.shape[1]):  # one sibling rank at a time, vectorised over rows
        x = tokens[:, i : i + 1]
        px, qx = p.gather(1, x), q.gather(1, x)
        targets.append(px)
        drafts.append(qx)
        residual = (p - q).clamp(min=0)
        residual_sum = residual.sum(-1, keepdim=True)
        # subtle: p == q leaves no residual, and then rejection has probability 0 anyway
        residual = torch.where(residual_sum > 0, residual / residual_sum.clamp(min=1e-30), p)
        rest = q.scatter(1, x, 0.0)
        rest_sum = rest.sum(-1, keepdim=True)
        rest = torch.where(rest_sum > 0, rest / rest_sum.clamp(min=1e-30), rest)
        step = tried[:, i : i + 1]
        p, q = torch.where(step, residual, p), torch.where(step, rest, q)
    return torch.cat(targets, 1), torch.cat(drafts, 1), p


def recursive_rejection(
    p: torch.Tensor,
    q: torch.Tensor,
    tokens: torch.Tensor,
    tried: torch.Tensor,
    tests: torch.Tensor,
    final: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling among a node's children (see :func:`rejection_chain` for
    ``p``, ``q``, ``tokens``, ``tried``). ``tests``: ``(rows, s)`` U[0, 1) numbers, child
    ``i`` is accepted when ``tests[:, i] * q_i(x_i) < p_i(x_i)``; ``final``: ``(rows,)`` the
    U[0, 1) number of the recovered draw. Returns the ``(rows,)`` rank of the accepted child
    (-1: none) and the ``(rows,)`` emitted token (the accepted child or the recovered token)."""
    target, draft, residual = rejection_chain(p, q, tokens, tried)
    passed = tried & (tests * draft < target)  # (rows, s)
    # the first passing child wins: the later ones are never tried
    s = tokens.shape[1]
    rank = torch.where(passed, torch.arange(s, device=tokens.device), s).amin(-1)
    accepted = rank < s
    chosen = tokens.gather(1, rank.clamp(max=s - 1)[:, None]).squeeze(1)
    token = torch.where(accepted, chosen, race(residual.log(), final))
    return torch.where(accepted, rank, -1), token
