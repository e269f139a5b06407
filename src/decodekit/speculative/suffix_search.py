"""Drafts read from a :class:`~decodekit.speculative.suffix_tree.SuffixTree`: the context's
matches, the most frequent path and the best-first tree below one, scored by the sum of their
estimated path probabilities (SuffixDecoding, Oliaro et al., NeurIPS 2025, Sec. 3).

Ties between equally frequent continuations go to the smaller token id, so drafts depend only
on the stored text, never on the order the tree was built in.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

Position = tuple[int, int]
"""``(node, offset)``: the string ending ``offset`` tokens into ``node``'s edge; ``(0, 0)`` is the
empty string at the root."""


class TreeSearch:
    """Mixed into :class:`~decodekit.speculative.suffix_tree.SuffixTree`, whose columns,
    sequences and :meth:`locate` / :meth:`continues` it reads."""

    def _next(self, position: Position) -> list[tuple[int, Position, int]]:
        """``(token, position, count)`` of every one-token continuation."""
        node, offset = position
        if offset < self.length[node]:
            return [(self._label(node, offset), (node, offset + 1), self.count[node])]
        return [(self.token[c], (c, 1), self.count[c]) for c in self.children(node)]

    def match(self, context: list[int], longest: int) -> tuple[Position, int]:
        """``(position, m)``: the longest suffix ``context[-m:]`` (``m <= longest``) that occurs
        followed by something; ``((0, 0), 0)`` when none does. Binary search: a string that
        occurs followed by something has every suffix occurring followed by something too."""
        low, high, best = 1, min(longest, len(context), self.max_depth - 1), ((0, 0), 0)
        while low <= high:
            middle = (low + high) // 2
            position = self.locate(context[-middle:])
            if position is not None and self.continues(position):
                best, low = (position, middle), middle + 1
            else:
                high = middle - 1
        return best

    def matches(self, context: list[int], longest: int) -> Iterator[tuple[int, Position]]:
        """``(m, position)`` for every suffix ``context[-m:]`` (``1 <= m <= longest``) that
        occurs followed by something, longest first, found lazily (a caller that stops early
        pays for what it took): a binary search for the longest suffix that occurs (every
        shorter one occurs too), then one lookup per length."""
        low, high, top = 1, min(longest, len(context), self.max_depth - 1), 0
        while low <= high:
            middle = (low + high) // 2
            if self.locate(context[-middle:]) is not None:
                top, low = middle, middle + 1
            else:
                high = middle - 1
        for m in range(top, 0, -1):
            position = self.locate(context[-m:])
            if self.continues(position):
                yield m, position

    def own_matches(self, sequence: int, longest: int) -> Iterator[tuple[int, Position]]:
        """:meth:`matches` for a context that is the open sequence ``sequence`` itself: its
        open suffixes are where those matches end, so no lookup is needed."""
        suffixes, length = self._open[sequence], self.length
        for m in range(min(longest, len(suffixes), self.max_depth - 1), 0, -1):
            node = suffixes[len(suffixes) - m]
            position = (node, length[node])
            if self.continues(position):
                yield m, position

    def best_path(
        self, position: Position, budget: int, min_prob: float, prob: float = 1.0
    ) -> tuple[list[int], float, float, Position]:
        """Greedy single path below ``position``: the most frequent continuation each time
        (ties: the smaller token), while the path's estimated probability (starting from
        ``prob``) stays ``>= min_prob``. Returns ``(tokens, score, prob, end)`` with score the
        sum of path probabilities (the expected number of accepted tokens)."""
        tokens: list[int] = []
        score = 0.0
        node, offset = position
        length, count, token_of = self.length, self.count, self.token
        while len(tokens) < budget:
            if offset < length[node]:  # inside an edge: its tokens follow, at the same count
                take = min(length[node] - offset, budget - len(tokens))
                start = self.ref_end[node] - length[node] + offset
                tokens.extend(self._seqs[self.ref_seq[node]][start : start + take])
                offset += take
                score += take * prob
                continue
            best = -1
            for child in self.children(node):
                if best < 0 or count[child] > count[best] or count[child] == count[best] and token_of[child] < token_of[best]:
                    best = child
            if best < 0:
                break
            next_prob = prob * count[best] / count[node]
            if next_prob < min_prob:
                break
            prob, node, offset = next_prob, best, 1
            tokens.append(token_of[best])
            score += prob
        return tokens, score, prob, (node, offset)

    def best_tree(
        self, position: Position, budget: int, min_prob: float
    ) -> tuple[list[int], list[int], float]:
        """Best-first tree below ``position``: repeatedly add the most probable frontier string
        (SuffixDecoding's tree speculation; ties: the earlier parent, then the smaller token).
        Returns ``(tokens, parents, score)`` with parents as in
        :class:`~decodekit.speculative.base.Draft` and score the sum of path probabilities."""
        tokens: list[int] = []
        parents: list[int] = []
        score = 0.0
        frontier: list[tuple[float, int, int, Position]] = []  # (-prob, parent, token, position)

        def push(at: Position, prob: float, index: int) -> None:
            total = self.count[at[0]]
            for token, after, count in self._next(at):
                p = prob * count / total
                if p >= min_prob:
                    heapq.heappush(frontier, (-p, index, token, after))

        push(position, 1.0, -1)
        while frontier and len(tokens) < budget:
            neg_prob, parent, token, at = heapq.heappop(frontier)
            tokens.append(token)
            parents.append(parent)
            score -= neg_prob
            push(at, -neg_prob, len(tokens) - 1)
        return tokens, parents, score
