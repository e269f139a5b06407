"""SuffixDecoding (Oliaro et al., "SuffixDecoding: Extreme Speculative Decoding for Emerging AI
Applications", NeurIPS 2025).

Two suffix trees answer "what usually follows the current suffix?": a per-request tree over
the row's prompt and output so far, and a global tree over the outputs of previous requests
(at most ``max_cached_requests`` of them, evicted first in, first out). A match of ``m``
tokens allows ``max_spec_factor * m + max_spec_offset`` draft tokens; the draft (one path, or
a best-first tree) from each tree is scored by the sum of its estimated path probabilities
and the better one is proposed. Both trees are updated incrementally as tokens are accepted.
"""

from __future__ import annotations

from collections import deque

import torch

from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp, chain_parents
from decodekit.speculative.config import SuffixConfig
from decodekit.speculative.suffix_tree import SuffixTree


class SuffixTreeProposer:
    """SuffixDecoding drafts (see module docstring). The global tree lives as long as the
    proposer (one per :class:`~decodekit.api.Decoder` and config)."""

    name = "suffix"

    def __init__(self, config: SuffixConfig):
        self.config = config
        self.global_tree = SuffixTree(config.max_depth)
        self._cached: deque[list[int]] = deque()
        self._local: dict[int, SuffixTree] = {}
        self._fed: dict[int, int] = {}  # row -> tokens already in its local tree

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        self._local = {row: SuffixTree(self.config.max_depth) for row in range(len(prompts))}
        self._fed = dict.fromkeys(range(len(prompts)), 0)

    def _update(self, row: int, sequence: list[int]) -> None:
        fed = self._fed[row]
        if fed < len(sequence):
            self._local[row].extend(0, sequence[fed:])
            self._fed[row] = len(sequence)

    def _draft(self, tree: SuffixTree, sequence: list[int], limit: int) -> tuple[list[int], list[int], float]:
        config = self.config
        # Subtle: the longest match may sit at the bottom of the depth-limited tree, leaving no
        # room for a continuation; matching at most half the depth keeps room below.
        longest = max(1, config.max_depth // 2)
        node, matched = tree.match(sequence, longest)
        if matched == 0:
            return [], [], 0.0
        budget = min(config.max_tokens, limit, int(config.max_spec_factor * matched + config.max_spec_offset))
        if budget <= 0:
            return [], [], 0.0
        if config.tree:
            return tree.best_tree(node, budget, config.min_token_prob)
        tokens, score, prob, end = tree.best_path(node, budget, config.min_token_prob)
        # A path that ends at max_depth may go on in the text: match again from the extended
        # context so a long repeated span is drafted in one go.
        while tokens and len(tokens) < budget and tree.depth[end] == tree.max_depth:
            node, again = tree.match(sequence + tokens, longest)
            if again == 0:
                break
            more, more_score, prob, end = tree.best_path(node, budget - len(tokens), config.min_token_prob, prob)
            if not more:
                break
            tokens, score = tokens + more, score + more_score
        return tokens, chain_parents(len(tokens)), score

    def propose(self, context: SpeculationContext) -> Draft:
        all_tokens, all_parents = [], []
        for row, sequence, limit in zip(context.rows, context.sequences, context.limits):
            self._update(row, sequence)
            best = self._draft(self._local[row], sequence, limit)
            if len(self.global_tree.children[0]):
                shared = self._draft(self.global_tree, sequence, limit)
                if shared[2] > best[2]:
                    best = shared
            all_tokens.append(best[0])
            all_parents.append(best[1])
        return Draft.from_lists(all_tokens, all_parents)

    def observe(self, verification: Verification) -> None:
        pass  # accepted tokens reach the local trees through the next context (incremental)

    def finish(self, outputs: list[list[int]]) -> None:
        """Move this call's outputs into the global tree; evict the oldest beyond the bound."""
        self._local, self._fed = {}, {}
        if self.config.max_cached_requests == 0:
            return
        for output in outputs:
            if not output:
                continue
            self.global_tree.extend(-1, output)
            self.global_tree.close(-1)
            self._cached.append(list(output))
            while len(self._cached) > self.config.max_cached_requests:
                self.global_tree.remove(self._cached.popleft())
