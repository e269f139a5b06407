"""DeAL: decoding-time alignment as a lookahead search scored by an alignment reward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from decodekit import validation as v
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node


@dataclass(frozen=True)
class DeAL:
    """DeAL (Huang et al. 2024, "DeAL: Decoding-time Alignment for Large Language Models"):
    decoding as a heuristic-guided search. At every step each of the ``beams`` kept prefixes
    proposes its ``k`` most likely next tokens (the paper's top-k action set); each candidate
    is extended by a greedy *lookahead* of ``lookahead`` tokens (None: to the end of the
    completion) and scored by the alignment reward on that lookahead text, plus
    ``logprob_weight`` times the candidate's log-probability; the ``beams`` best candidates
    are kept (the paper's heuristic h = reward of the lookahead). The search ends when every
    kept prefix has finished or after ``max_steps`` steps; the answer is the best finished
    lookahead or kept prefix. All candidates' lookaheads run in one batch per step."""

    name: ClassVar[str] = "deal"
    k: int = 4
    beams: int = 1
    lookahead: int | None = None
    logprob_weight: float = 0.0
    max_steps: int = 256

    needs_reward: ClassVar[bool] = True

    def validate(self) -> None:
        v.integer("k", self.k, 1, 1024, "candidate tokens per prefix")
        v.integer("beams", self.beams, 1, 1024, "prefixes kept")
        if self.lookahead is not None:
            v.integer("lookahead", self.lookahead, 1, 1 << 20, "tokens, or None for a full completion")
        v.number("logprob_weight", self.logprob_weight, 0.0, 1e6)
        v.integer("max_steps", self.max_steps, 1, 1 << 20)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        kept, seen = [tree.root], []
        for _ in range(self.max_steps):
            growing = [node for node in kept if node.open]
            if not growing:
                break
            pairs = [(node, token) for node in growing for token, _ in tree.top_tokens(node, self.k)]
            candidates = tree.extend([node for node, _ in pairs], first=[token for _, token in pairs], max_tokens=1)
            ahead_of = [c for c in candidates if c.open]
            looks = dict(zip(map(id, ahead_of), tree.extend(ahead_of, max_tokens=self.lookahead))) if ahead_of else {}
            judged = [looks.get(id(c), c) for c in candidates]
            score(tree, reward, prompt, judged)
            seen.extend(j for j in judged if j.finished)
            for candidate, look in zip(candidates, judged):
                candidate.value = look.value + self.logprob_weight * candidate.logprob
            for node in growing:
                tree.release(node)
            order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].value, i))
            kept = [candidates[i] for i in order[: self.beams]] + [node for node in kept if not node.open and node.finished]
        finished = [node for node in kept + seen if node.finished] or kept
        best = max(range(len(finished)), key=lambda i: (finished[i].value if finished[i].value is not None else float("-inf"), -i))
        return finished[best], [node for node in seen if node.finished]
