"""SuffixDecoding (Oliaro et al., "SuffixDecoding: Extreme Speculative Decoding for Emerging AI
Applications", NeurIPS 2025).

Two suffix trees answer "what usually follows the current suffix?": a per-request tree over
the row's prompt and output so far, and a global tree over the outputs of previous requests
(at most ``max_cached_requests`` of them, evicted first in, first out). A match of ``m``
tokens allows ``max_spec_factor * m + max_spec_offset`` draft tokens; drafts (one path, or a
best-first tree) from every match length of each tree are scored by the sum of their estimated
path probabilities, and the best one is proposed. Both trees are updated incrementally as tokens are accepted.
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
        """The best-scoring draft over every match length, as SuffixDecoding scores them: a
        longer match is more specific, a shorter one has seen more continuations. Visited
        longest first; a shorter match wins only with a strictly higher score. Skipped: a match
        whose node counts as many occurrences as the next longer one (the same occurrences, so
        the same continuations with less budget), and every match whose budget cannot beat the
        best score so far (a draft scores at most its token count)."""
        config = self.config
        # Subtle: the longest match may sit at the bottom of the depth-limited tree, leaving no
        # room for a continuation; matching at most half the depth keeps room below.
        longest = max(1, config.max_depth // 2)
        best: tuple[list[int], list[int], float] = ([], [], 0.0)
        previous = None
        for matched, node in reversed(tree.matches(sequence, longest)):
            budget = min(config.max_tokens, limit, int(config.max_spec_factor * matched + config.max_spec_offset))
            if budget <= best[2]:
                break  # budgets only shrink with shorter matches
            count = tree.counts[node]
            if count == previous:
                continue
            previous = count
            draft = self._from(tree, node, sequence, budget, longest)
            if draft[2] > best[2]:
                best = draft
        return best

    def _from(self, tree: SuffixTree, node: int, sequence: list[int], budget: int, longest: int) -> tuple[list[int], list[int], float]:
        """The draft below ``node``: a best-first tree, or the most frequent path."""
        config = self.config
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
