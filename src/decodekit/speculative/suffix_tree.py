"""A depth-limited suffix tree with occurrence counts, updated one token at a time.

The tree holds every substring of length ``<= max_depth`` of the sequences added to it; a
node's ``count`` is how many times its string occurs, so ``count(child) / count(node)``
estimates the probability that the node's string is followed by the child's token, the
estimate SuffixDecoding drafts from (Oliaro et al., NeurIPS 2025, Sec. 3).

Updates are incremental: a sequence keeps its *open suffixes* (the nodes of its suffixes
shorter than ``max_depth``); appending a token moves each open suffix one edge down, creating
the edge if needed, so one token costs ``O(max_depth)`` dictionary operations whatever the
sequence's length. Removing a sequence replays it and decrements (FIFO eviction of the global
tree). Edges are not path-compressed: simple, and cheap enough at the depths used here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class SuffixTree:
    """Suffix tree over several sequences (see module docstring). Node 0 is the root."""

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.children: list[dict[int, int]] = [{}]
        self.counts: list[int] = [0]
        self.depth: list[int] = [0]
        self._free: list[int] = []
        self._open: dict[int, list[int]] = {}  # sequence id -> open suffix nodes (depth < max)

    def __len__(self) -> int:
        return len(self.children) - len(self._free)

    def _new_node(self, depth: int) -> int:
        if self._free:
            node = self._free.pop()
            self.depth[node] = depth
            return node
        self.children.append({})
        self.counts.append(0)
        self.depth.append(depth)
        return len(self.children) - 1

    # -- updates --------------------------------------------------------------------------------

    def extend(self, sequence: int, tokens: Iterable[int]) -> None:
        """Append ``tokens`` to sequence ``sequence`` (created on first use). Mutates the tree."""
        open_nodes = self._open.setdefault(sequence, [])
        children, counts, depth, limit = self.children, self.counts, self.depth, self.max_depth
        for token in tokens:
            open_nodes.append(0)  # the empty suffix starts here
            moved = []
            for node in open_nodes:
                edges = children[node]
                child = edges.get(token)
                if child is None:
                    if self._free:
                        child = self._new_node(depth[node] + 1)
                    else:  # inlined _new_node: this loop is the proposer's hot path
                        child = len(children)
                        children.append({})
                        counts.append(0)
                        depth.append(depth[node] + 1)
                    edges[token] = child
                counts[child] += 1
                if depth[child] < limit:
                    moved.append(child)
            counts[0] += 1
            open_nodes[:] = moved

    def close(self, sequence: int) -> None:
        """Stop tracking ``sequence``'s open suffixes (its substrings stay in the tree)."""
        self._open.pop(sequence, None)

    def remove(self, tokens: list[int]) -> None:
        """Take one earlier-added sequence ``tokens`` out again (counts down, empty nodes freed)."""
        children, counts, limit = self.children, self.counts, self.max_depth
        emptied: list[int] = []
        for start in range(len(tokens)):
            node = 0
            for token in tokens[start : start + limit]:
                child = children[node][token]
                counts[child] -= 1
                if counts[child] == 0:
                    # No occurrence is left, so no later suffix of this replay passes here; the
                    # child's own edges stay readable until the replay is over.
                    del children[node][token]
                    emptied.append(child)
                node = child
            counts[0] -= 1
        for node in emptied:
            children[node] = {}
            self._free.append(node)

    # -- queries --------------------------------------------------------------------------------

    def walk(self, tokens: list[int]) -> int | None:
        """The node of string ``tokens``, or None if it does not occur."""
        node, children = 0, self.children
        for token in tokens:
            node = children[node].get(token)
            if node is None:
                return None
        return node

    def match(self, context: list[int], longest: int) -> tuple[int, int]:
        """``(node, m)``: the longest suffix ``context[-m:]`` (``m <= longest``) whose node has a
        continuation; ``(0, 0)`` when none has. Binary search: a string that occurs followed by
        something has every suffix occurring followed by something too."""
        low, high, best = 1, min(longest, len(context), self.max_depth - 1), (0, 0)
        while low <= high:
            middle = (low + high) // 2
            node = self.walk(context[-middle:])
            if node is not None and self.children[node]:
                best, low = (node, middle), middle + 1
            else:
                high = middle - 1
        return best

    def matches(self, context: list[int], longest: int) -> list[tuple[int, int]]:
        """``[(m, node), ...]`` for every suffix ``context[-m:]`` (``1 <= m <= longest``) that
        occurs in the tree followed by something, shortest first. A suffix that does not occur
        ends the list: no longer one can occur either."""
        out, children = [], self.children
        for m in range(1, min(longest, len(context), self.max_depth - 1) + 1):
            node = self.walk(context[-m:])
            if node is None:
                break
            if children[node]:
                out.append((m, node))
        return out

    def best_path(
        self, node: int, budget: int, min_prob: float, prob: float = 1.0
    ) -> tuple[list[int], float, float, int]:
        """Greedy single path below ``node``: the most frequent child each time, while the
        path's estimated probability (starting from ``prob``) stays ``>= min_prob``. Returns
        ``(tokens, score, prob, end node)`` with score the sum of path probabilities (the
        expected number of accepted tokens)."""
        tokens: list[int] = []
        score = 0.0
        children, counts = self.children, self.counts
        while len(tokens) < budget and children[node]:
            token, child = max(children[node].items(), key=lambda item: counts[item[1]])
            next_prob = prob * counts[child] / counts[node]
            if next_prob < min_prob:
                break
            prob = next_prob
            tokens.append(token)
            score += prob
            node = child
        return tokens, score, prob, node

    def best_tree(
        self, node: int, budget: int, min_prob: float
    ) -> tuple[list[int], list[int], float]:
        """Best-first tree below ``node``: repeatedly add the most probable frontier node
        (SuffixDecoding's tree speculation). Returns ``(tokens, parents, score)`` with parents as
        in :class:`~decodekit.speculative.base.Draft` and score the sum of path probabilities."""
        tokens: list[int] = []
        parents: list[int] = []
        score, tie = 0.0, 0
        children, counts = self.children, self.counts
        frontier: list[tuple[float, int, int, int, int]] = []  # (-prob, tie, node, parent, token)

        def push(at: int, prob: float, index: int) -> None:
            nonlocal tie
            for token, child in children[at].items():
                p = prob * counts[child] / counts[at]
                if p >= min_prob:
                    heapq.heappush(frontier, (-p, tie, child, index, token))
                    tie += 1

        push(node, 1.0, -1)
        while frontier and len(tokens) < budget:
            neg_prob, _, at, parent, token = heapq.heappop(frontier)
            tokens.append(token)
            parents.append(parent)
            score -= neg_prob
            push(at, -neg_prob, len(tokens) - 1)
        return tokens, parents, score
