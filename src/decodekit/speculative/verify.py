"""The verifier: which draft path the target accepts, and its recovered or bonus token.

Input is the block the target scored in one forward: block token 0 is the row's last token
(the root) and tokens ``1..n`` are the draft nodes; ``logits[:, j]`` is the target's
next-token distribution after block token ``j``'s path. Words as in
:mod:`decodekit.speculative.base`: *accepted*, *recovered*, *bonus*.

- Greedy: a node is accepted when it equals the target's argmax after its parent and all its
  ancestors are accepted; the deepest accepted node wins (siblings are distinct, so at most
  one node per depth qualifies). Its argmax is the recovered or bonus token. Exact: the kept
  tokens are the target's own greedy tokens.
- Sampling (Leviathan et al., 2023, Alg. 1; Chen et al., 2023, Alg. 2): a node ``x`` drawn
  from ``q`` is accepted with probability ``min(1, p(x) / q(x))``; on rejection the recovered
  token is drawn from ``norm(max(0, p - q))``. Siblings drawn without replacement from one
  ``q`` (a draft model's tree) are tried one after another by recursive rejection sampling
  (Jeon et al., 2024; :mod:`decodekit.speculative.rsd`). A deterministic node has ``q``
  one-hot, so it is accepted with probability ``p(x)`` and the residual is ``p`` without
  ``x``; trying the distinct deterministic children of a node one after another in this way
  is the same as drawing ``y ~ p`` once and following the child equal to ``y`` (the
  recovered token is ``y`` when there is none), which is what is implemented for them.
  Either way every emitted token is distributed exactly as plain sampling from ``p`` would
  draw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.model.base import tree_ancestors
from decodekit.search.base import race
from decodekit.speculative.base import Warp
from decodekit.speculative.rsd import recursive_rejection


@dataclass(frozen=True)
class Acceptance:
    """``path``: ``(rows, m)`` block indices root-first of each row's accepted path (root
    included, padded); ``kept``: ``(rows,)`` path lengths (1 + accepted); ``tokens``:
    ``(rows, m)`` the tokens emitted at path steps: ``tokens[r, j]`` follows ``path[r, j]``,
    so ``tokens[r, :kept[r]]`` are the accepted tokens then the recovered or bonus token.
    ``logprobs``: ``(rows, m)`` their target log-probabilities (before warping)."""

    path: torch.Tensor
    kept: torch.Tensor
    tokens: torch.Tensor
    logprobs: torch.Tensor


def _path_of(best: torch.Tensor, ancestors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows,)`` chosen nodes -> root-first ``(rows, m)`` paths and ``(rows,)`` lengths."""
    rows, n = best.shape[0], ancestors.shape[1]
    on_path = ancestors[torch.arange(rows, device=best.device), best]  # (rows, n)
    kept = on_path.sum(-1)
    # Parents precede children, so block order along a path is root-first order.
    key = torch.where(on_path, torch.arange(n, device=best.device), n)
    m = int(kept.max())
    path = key.sort(-1).values[:, :m]
    return path.clamp(max=n - 1), kept


def accept_greedy(
    logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor
) -> Acceptance:
    """Longest agreeing path. ``logits``: ``(rows, n, V)``; ``tokens``/``parents``/``valid``:
    ``(rows, n)`` block tensors (index 0 is the root, parent ``-1``)."""
    target = logits.argmax(-1)  # (rows, n)
    rows, n = tokens.shape
    ancestors = tree_ancestors(parents)
    agrees = valid & (tokens == target.gather(1, parents.clamp(min=0)))
    agrees[:, 0] = True
    path_ok = ~(ancestors & ~agrees[:, None, :]).any(-1)  # every ancestor-or-self agrees
    depth = ancestors.sum(-1) - 1
    best = torch.where(path_ok, depth, -1).argmax(-1)  # (rows,)
    path, kept = _path_of(best, ancestors)
    emitted = target.gather(1, path)
    return Acceptance(path, kept, emitted, _logprobs(logits, path, emitted))


def accept_sampling(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    valid: torch.Tensor,
    warp: Warp,
    uniforms: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
) -> Acceptance:
    """Speculative sampling over a tree of deterministic nodes, or a stochastic chain or tree
    (``draft_probs``: ``(rows, n - 1, V)`` the distributions the draft nodes were drawn from;
    siblings share theirs, were drawn without replacement and come in draw order: recursive
    rejection sampling, :mod:`decodekit.speculative.rsd`). One depth per loop iteration,
    vectorised over rows.

    ``uniforms``: ``(rows, n, 1 + s)`` independent U[0, 1) numbers, ``[:, d]`` for the output
    position at depth ``d``: ``[..., 0]`` tests a stochastic node's first child (or draws the
    token where there is no stochastic child), ``[..., 1]`` draws the recovered token,
    ``[..., 2:]`` test its children 2 to ``s`` (later ones are not tried). Subtle: tying the
    randomness to the output *position* (not to the draft) makes a deterministic draft
    irrelevant to the result: the token at each position is the draw of ``p`` with that
    position's number (:func:`~decodekit.search.base.race`), exactly what plain sampling with the same numbers would emit. So a
    seed fixes the output even though proposers with cross-call state (suffix trees,
    recycling) draft differently from call to call."""
    rows, n, vocab = logits.shape
    device = logits.device
    warped = warp(logits.reshape(rows * n, vocab)).reshape(rows, n, vocab)
    probs = warped.softmax(-1)
    ancestors = tree_ancestors(parents)
    arange = torch.arange(rows, device=device)
    block = torch.arange(n, device=device)
    siblings = uniforms.shape[-1] - 1  # children of one node tried one after another
    current = torch.zeros(rows, dtype=torch.long, device=device)
    live = torch.ones(rows, dtype=torch.bool, device=device)
    chosen = torch.zeros(rows, dtype=torch.long, device=device)  # the emitted token at `current`
    depth = 0
    while True:
        u = uniforms[:, min(depth, uniforms.shape[1] - 1)]  # (rows, 1 + s)
        depth += 1
        p = probs[arange, current]  # (rows, V)
        children = valid & (parents == current[:, None])  # (rows, n)
        children &= live[:, None]
        if draft_probs is None:
            y = race(warped[arange, current], u[:, 0])
            match = children & (tokens == y[:, None])
            step = match.any(-1)
            chosen = torch.where(live, y, chosen)
            current = torch.where(step, match.int().argmax(-1), current)
        else:
            # the node's children in block order, which is their draw order (rows, s)
            order = torch.where(children, block, n).sort(-1).values[:, :siblings]
            tried = order < n
            child = order.clamp(max=n - 1)
            q = draft_probs[arange, (child[:, 0] - 1).clamp(min=0)]  # siblings share q (rows, V)
            tests = torch.cat([u[:, :1], u[:, 2:]], 1)[:, : child.shape[1]]
            # no child: a plain draw of p with the position's first number, as a tree node
            # without children and an empty draft do, so a row's tokens never depend on
            # whether other rows of the batch drafted
            final = torch.where(tried[:, 0], u[:, 1], u[:, 0])
            rank, y = recursive_rejection(p, q, tokens.gather(1, child), tried, tests, final)
            step = rank >= 0
            chosen = torch.where(live, y, chosen)
            accepted = child.gather(1, rank.clamp(min=0)[:, None]).squeeze(1)
            current = torch.where(step, accepted, current)
        live = live & step
        if not bool(live.any()):
            break
    path, kept = _path_of(current, ancestors)
    emitted = tokens.gather(1, path[:, 1:]) if path.shape[1] > 1 else path[:, :0]
    emitted = torch.cat([emitted, chosen[:, None]], 1)
    # rows whose path is shorter than m: put the final token at its own step
    emitted[arange, kept - 1] = chosen
    return Acceptance(path, kept, emitted, _logprobs(logits, path, emitted))


def _logprobs(logits: torch.Tensor, path: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
    rows, m = path.shape
    steps = logits.gather(1, path[:, :, None].expand(rows, m, logits.shape[-1]))  # (rows, m, V)
    return steps.log_softmax(-1).gather(2, emitted[:, :, None]).squeeze(-1)


def accept_rows(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    valid: torch.Tensor,
    warps: list,
    uniforms: torch.Tensor | None,
    draft_probs: torch.Tensor | None = None,
) -> Acceptance:
    """Each row's accepted path by its own sampler (``warps[r]``; None: greedy, by
    :func:`accept_greedy`; else :func:`accept_sampling`). Rows of several samplers (requests
    that joined one run with their own) are verified one sampler at a time; a row's result
    depends on its own rows alone, so splitting them changes nothing."""
    device = logits.device

    def verify(warp, index=None) -> Acceptance:
        def pick(x):
            return x if index is None or x is None else x.index_select(0, index)

        if warp is None:
            return accept_greedy(pick(logits), pick(tokens), pick(parents), pick(valid))
        return accept_sampling(pick(logits), pick(tokens), pick(parents), pick(valid), warp, pick(uniforms), pick(draft_probs))

    if all(w is warps[0] for w in warps):
        return verify(warps[0])
    groups: dict[int, tuple] = {}
    for row, warp in enumerate(warps):
        groups.setdefault(id(warp), (warp, []))[1].append(row)
    parts = []
    for warp, rows in groups.values():
        index = torch.tensor(rows, device=device)
        parts.append((index, verify(warp, index)))
    width = max(part.path.shape[1] for _, part in parts)

    def merged(name: str) -> torch.Tensor:
        first = getattr(parts[0][1], name)
        out = first.new_zeros((len(warps), width) if first.dim() == 2 else (len(warps),))
        for index, part in parts:
            value = getattr(part, name)
            if value.dim() == 2 and value.shape[1] < width:
                value = torch.cat([value, value.new_zeros(value.shape[0], width - value.shape[1])], 1)
            out.index_copy_(0, index, value)
        return out

    return Acceptance(merged("path"), merged("kept"), merged("tokens"), merged("logprobs"))
