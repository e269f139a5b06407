"""SuffixDecoding (Oliaro et al., "SuffixDecoding: Extreme Speculative Decoding for Emerging AI
Applications", NeurIPS 2025).

Two suffix trees answer "what usually follows the current suffix?": a per-request tree over
the row's prompt and output so far, and a global tree over outputs (at most
``max_cached_requests`` of them, evicted first in, first out). A row's output joins the global
tree as it is generated, so rows decoding at the same time draft from each other too. A match
of ``m`` tokens allows ``max_spec_factor * m + max_spec_offset`` draft tokens; drafts from
every match length of each tree are scored by the sum of their estimated path probabilities
(the expected number of accepted tokens), and the best one is proposed: the most frequent
path, which re-matches to go on past the trees' depth limit, or with ``tree`` a best-first
tree, or that path when it scores higher. Both trees are updated incrementally.
"""

from __future__ import annotations

import torch

from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp, chain_parents
from decodekit.speculative.config import SuffixConfig
from decodekit.speculative.suffix_tree import Position, SuffixTree


def _chain(parents: list[int]) -> int:
    """Tokens on the longest root-to-leaf path of a draft tree."""
    depth: list[int] = []
    for parent in parents:
        depth.append(depth[parent] + 1 if parent >= 0 else 1)
    return max(depth, default=0)


class SuffixTreeProposer:
    """SuffixDecoding drafts (see module docstring). The global tree lives as long as the
    proposer (one per :class:`~decodekit.api.Decoder` and config)."""

    name = "suffix"

    def __init__(self, config: SuffixConfig):
        self.config = config
        self.global_tree = SuffixTree(config.max_depth)
        self._cached: dict[int, None] = {}  # ids of the outputs in the global tree, oldest first
        self._added = 0
        self._local: dict[int, SuffixTree] = {}
        self._prompt_length: dict[int, int] = {}
        self._shared: dict[int, int] = {}  # row -> its output's id in the global tree

    joins = True  # rows may join and leave a running call (continuous batching)

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        self._local, self._prompt_length, self._shared = {}, {}, {}
        self.join(list(range(len(prompts))), prompts, generators)

    def join(self, rows: list[int], prompts: list[list[int]], generators: tuple[torch.Generator | None, ...] = ()) -> None:
        """Rows ``rows`` (ids new to this call) begin with ``prompts``."""
        for row, prompt in zip(rows, prompts):
            self._local[row] = SuffixTree(self.config.max_depth)
            self._prompt_length[row] = len(prompt)
            if self.config.max_cached_requests:
                self._added = (self._added + 1) % (1 << 31)  # ids fit the int32 columns; the live ones are far apart
                self._shared[row] = self._added
                self._cached[self._added] = None
        self._evict()

    def _update(self, row: int, sequence: list[int]) -> None:
        local = self._local[row]
        if local.stored_tokens < len(sequence):
            local.extend(0, sequence[local.stored_tokens :])
            self._share(row, sequence[self._prompt_length[row] :])

    def _share(self, row: int, output: list[int]) -> None:
        """Append the row's output tokens not yet in the global tree (unless it was evicted)."""
        sequence = self._shared.get(row)
        if sequence in self._cached:
            sent = self.global_tree.length_of(sequence)
            if len(output) > sent:
                self.global_tree.extend(sequence, output[sent:])

    def _evict(self) -> None:
        while len(self._cached) > self.config.max_cached_requests:
            oldest = next(iter(self._cached))
            del self._cached[oldest]
            self.global_tree.discard(oldest)

    def _draft(self, tree: SuffixTree, sequence: list[int], limit: int, own: int | None = None) -> tuple[list[int], list[int], float]:
        """The best-scoring draft over every match length, as SuffixDecoding scores them: a
        longer match is more specific, a shorter one has seen more continuations. Visited
        longest first; a shorter match wins only with a strictly higher score (``own``: the id
        of ``sequence`` in ``tree``, when the tree holds the whole of it). Skipped: every
        match whose budget cannot beat the best score so far (a draft scores at most its token
        count), and a match with the same occurrences as the next longer one whose draft did
        not reach the depth limit (the same continuations, with less budget; one that did reach
        it leaves the shorter match more room below, so that one is tried)."""
        config = self.config
        # Subtle: the longest match may sit at the bottom of the depth-limited tree, leaving no
        # room for a continuation; matching at most half the depth keeps room below.
        longest = max(1, config.max_depth // 2)
        best: tuple[list[int], list[int], float] = ([], [], 0.0)
        previous = None
        found = tree.matches(sequence, longest) if own is None else tree.own_matches(own, longest)
        for matched, position in found:
            budget = min(config.max_tokens, limit, int(config.max_spec_factor * matched + config.max_spec_offset))
            if budget <= best[2]:
                break  # budgets only shrink with shorter matches
            count = tree.count_at(position)
            if count == previous:
                continue
            draft = self._from(tree, position, sequence, budget, longest)
            if draft[2] > best[2]:
                best = draft
            previous = count if _chain(draft[1]) < tree.max_depth - matched else None
        return best

    def _from(self, tree: SuffixTree, position: Position, sequence: list[int], budget: int, longest: int) -> tuple[list[int], list[int], float]:
        """The draft below ``position``: the most frequent path, or with ``tree`` a best-first
        tree unless that path (which can go on past the depth limit) scores higher."""
        config = self.config
        drafted = tree.best_tree(position, budget, config.min_token_prob) if config.tree else None
        tokens, score, prob, end = tree.best_path(position, budget, config.min_token_prob)
        # A path that ends at max_depth may go on in the text: match again from the extended
        # context so a long repeated span is drafted in one go.
        while tokens and len(tokens) < budget and tree.depth_at(end) == tree.max_depth:
            again, matched = tree.match(sequence[-longest:] + tokens, longest)  # the tail is enough
            if matched == 0:
                break
            more, more_score, prob, end = tree.best_path(again, budget - len(tokens), config.min_token_prob, prob)
            if not more:
                break
            tokens, score = tokens + more, score + more_score
        if drafted is not None and drafted[2] >= score:
            return drafted
        return tokens, chain_parents(len(tokens)), score

    def propose(self, context: SpeculationContext) -> Draft:
        all_tokens, all_parents = [], []
        for row, sequence, limit in zip(context.rows, context.sequences, context.limits):
            self._update(row, sequence)
            best = self._draft(self._local[row], sequence, limit, own=0)
            if not self.global_tree.empty:
                # the row's output is open in the global tree: once it is as long as the longest
                # match, the context's matches there are its open suffixes
                own = self._shared.get(row)
                if own not in self._cached or self.global_tree.length_of(own) < max(1, self.config.max_depth // 2):
                    own = None
                shared = self._draft(self.global_tree, sequence, limit, own)
                if shared[2] > best[2]:
                    best = shared
            all_tokens.append(best[0])
            all_parents.append(best[1])
        return Draft.from_lists(all_tokens, all_parents)

    def observe(self, verification: Verification) -> None:
        pass  # accepted tokens reach the local trees through the next context (incremental)

    def leave(self, rows: list[int], outputs: list[list[int]]) -> None:
        """Rows that finished: complete their outputs in the global tree (the last tokens,
        never proposed from) and close them."""
        for row, output in zip(rows, outputs):
            if row in self._shared:
                self._share(row, output)
                self.global_tree.close(self._shared.pop(row))
            self._local.pop(row, None)
            self._prompt_length.pop(row, None)

    def finish(self, outputs: list[list[int]]) -> None:
        """End the call: every row still open leaves with its output."""
        rows = [row for row in range(len(outputs)) if row in self._local]
        self.leave(rows, [outputs[row] for row in rows])
        self._local, self._shared, self._prompt_length = {}, {}, {}
