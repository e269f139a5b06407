"""Token Recycling (Luo et al., 2024, "Turning Trash into Treasure: Accelerating Inference of
Large Language Models with Token Recycling").

Every verification computes the target's distribution after every draft token, accepted or
not; their top-k are "recycled" into an adjacency matrix ``successors[token] = top-k next
tokens``, kept across calls. A draft is read off that matrix along a static breadth-first tree
template: the root is the row's last token and the child ranked ``r`` of a node holding token
``t`` holds ``successors[t, r]``. No draft model, no training, a few gathers per step.
"""

from __future__ import annotations

import torch

from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp
from decodekit.speculative.config import RecyclingConfig


def tree_template(branching: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Breadth-first ``(parent, rank, depth)`` nodes: the best node at depth ``d`` gets
    ``branching[d]`` children and its sibling ranked ``r`` gets ``r`` fewer."""
    nodes: list[tuple[int, int, int]] = []
    level = [(-1, 0)]  # (node index, its rank among siblings)
    for depth, width in enumerate(branching):
        next_level = []
        for parent, parent_rank in level:
            for rank in range(max(0, width - parent_rank)):
                nodes.append((parent, rank, depth))
                next_level.append((len(nodes) - 1, rank))
        level = next_level
    return nodes


class TokenRecyclingProposer:
    """Tree drafts from the recycled successor matrix (see module docstring)."""

    name = "recycling"
    joins = True  # no per-row state: rows may join and leave a running call

    def __init__(self, config: RecyclingConfig, vocab_size: int):
        self.config = config
        self.successors = torch.zeros((vocab_size, config.top_k), dtype=torch.long)
        self.filled = torch.zeros(vocab_size, dtype=torch.bool)
        template = tree_template(config.branching)
        self._parents = torch.tensor([p for p, _, _ in template], dtype=torch.long)
        self._ranks = torch.tensor([r for _, r, _ in template], dtype=torch.long)
        depths = [d for _, _, d in template]
        self._levels = [
            torch.tensor([i for i, d in enumerate(depths) if d == level], dtype=torch.long)
            for level in range(len(config.branching))
        ]
        self._depth = torch.tensor(depths, dtype=torch.long)

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        pass  # the successor matrix persists across calls by design

    def join(self, rows: list[int], prompts: list[list[int]], generators: tuple[torch.Generator | None, ...] = ()) -> None:
        pass

    def propose(self, context: SpeculationContext) -> Draft:
        rows, n = len(context.rows), len(self._parents)
        last = torch.tensor([seq[-1] for seq in context.sequences], dtype=torch.long)
        tokens = torch.zeros((rows, n), dtype=torch.long)
        valid = torch.zeros((rows, n), dtype=torch.bool)
        for nodes in self._levels:  # (rows, level) per tree level, parents already filled
            parents = self._parents[nodes]
            root = parents < 0
            parent_tokens = torch.where(root, last[:, None], tokens[:, parents.clamp(min=0)])
            parent_valid = root | valid[:, parents.clamp(min=0)]
            tokens[:, nodes] = self.successors[parent_tokens, self._ranks[nodes]]
            valid[:, nodes] = parent_valid & self.filled[parent_tokens]
        limits = torch.tensor(context.limits, dtype=torch.long)
        valid &= self._depth[None, :] < limits[:, None]
        return Draft(tokens, self._parents.expand(rows, n).clone(), valid)

    def observe(self, verification: Verification) -> None:
        """Recycle the target's top-k after every scored block token, rejected ones included."""
        top = verification.logits.topk(self.config.top_k, dim=-1).indices.cpu()  # (rows, n + 1, k)
        valid = verification.valid.cpu()
        inputs = verification.inputs.cpu()[valid]
        self.successors[inputs] = top[valid]
        self.filled[inputs] = True

    def finish(self, outputs: list[list[int]]) -> None:
        pass
