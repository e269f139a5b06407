"""A*-decoding: best-first search over partial solutions under a token budget."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import ClassVar

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.search.sampling import Sampling
from decodekit.testtime.reward import evaluate
from decodekit.testtime.sampled import _sampler
from decodekit.testtime.tree import Node, check_sampler


@dataclass(frozen=True)
class AStarDecoding:
    """A*-decoding (Chatziveroglou 2025, "A*-Decoding: Token-Efficient Inference Scaling"):
    decoding as best-first search in the space of partial solutions. A node's priority is
    ``f = h - cost_weight * g``: ``h`` its reward (a process reward of the prefix, or an
    outcome reward of its completion, greedy or drawn with ``rollout_sampler``, which is then
    a node of the search too) and ``g``
    its length in tokens. The best ``parallel`` nodes are popped together; a finished node
    popped is the answer (optimal when ``h`` never underestimates the best reward reachable
    from a node and ``cost_weight`` is 0); an open one gets ``k`` next steps (identical
    children are merged): sampled (``expansion="sample"``), or its ``k`` most likely next
    tokens each continued greedily to the step's end (``"top_k"``: deterministic, and it
    never draws the same child twice). The search also ends when ``token_budget`` tokens were generated,
    returning the best finished node seen, or the greedy completion of the best open one."""

    name: ClassVar[str] = "astar"
    k: int = 4
    token_budget: int = 2048
    parallel: int = 1
    cost_weight: float = 0.0
    boundary: str = "\n"
    sampler: Sampling = field(default_factory=_sampler)
    rollout_sampler: Sampling | None = None
    expansion: str = "sample"

    needs_reward: ClassVar[bool] = True

    def validate(self) -> None:
        v.integer("k", self.k, 1, v.MAX_ROWS, "children per expansion")
        v.integer("token_budget", self.token_budget, 1, 1 << 30, "tokens generated at most")
        v.integer("parallel", self.parallel, 1, v.MAX_ROWS, "nodes expanded together")
        v.number("cost_weight", self.cost_weight, 0.0, 1e6)
        if not isinstance(self.boundary, str) or not self.boundary:
            raise ConfigError("boundary", self.boundary, 'a non-empty string that ends a step, e.g. "\\n"')
        check_sampler(self.sampler)
        check_sampler(self.rollout_sampler, "rollout_sampler")
        v.choice("expansion", self.expansion, ("sample", "top_k"))

    def _expand(self, tree, popped: list[Node]) -> list[Node]:
        if self.expansion == "sample":
            children = tree.extend([n for n in popped for _ in range(self.k)], sampler=self.sampler, boundary=self.boundary)
        else:
            pairs = [(n, token) for n in popped for token, _ in tree.top_tokens(n, self.k)]
            children = tree.extend([n for n, _ in pairs], first=[t for _, t in pairs], boundary=self.boundary)
        return _merge_duplicates(tree, children)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        heap: list[tuple[float, int, Node]] = []
        count = 0
        finished: list[Node] = []

        def push(nodes: list[Node]) -> None:
            nonlocal count
            for node in nodes:
                count += 1
                heapq.heappush(heap, (-(node.value - self.cost_weight * len(node.tokens)), count, node))

        pushed: set[int] = set()

        def push_new(nodes: list[Node]) -> None:
            fresh = [node for node in nodes if id(node) not in pushed]
            pushed.update(map(id, fresh))
            push(fresh)

        evaluate(tree, reward, prompt, [tree.root], finished, self.rollout_sampler)
        push_new([tree.root])
        push_new([node for node in finished if node.finished])
        while heap and tree.compute.tokens_generated < self.token_budget:
            popped = [heapq.heappop(heap)[2] for _ in range(min(self.parallel, len(heap)))]
            done = [node for node in popped if node.finished]
            if done:
                return max(done, key=lambda n: n.value), finished
            children = self._expand(tree, popped)
            for node in popped:
                tree.release(node)
            before = len(finished)
            evaluate(tree, reward, prompt, children, finished, self.rollout_sampler)
            push_new(children)
            push_new([node for node in finished[before:] if node.finished])
        done = [node for node in finished if node.finished]
        if done:
            return max(done, key=lambda n: n.value), finished
        best = min(heap)[2]  # nothing finished within the budget: complete the most promising
        completion = tree.extend([best])[0]
        evaluate(tree, reward, prompt, [completion], finished, self.rollout_sampler)
        return completion, finished


def _merge_duplicates(tree, nodes: list[Node]) -> list[Node]:
    """Drop children whose tokens equal an earlier child's (releasing their rows)."""
    seen, out = set(), []
    for node in nodes:
        if node.tokens in seen:
            tree.release(node)
            continue
        seen.add(node.tokens)
        out.append(node)
    return out

