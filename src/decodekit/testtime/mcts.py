"""Monte-Carlo tree search over tokens with the model as prior (PG-TD)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from decodekit import validation as v
from decodekit.search.sampling import Sampling
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node, check_sampler


@dataclass(frozen=True)
class MCTS:
    """Planning-Guided Transformer Decoding (Zhang et al. 2023, "Planning with Large Language
    Models for Code Generation", Algorithm 1), the "LLM tree search" of code generation:

    1. *select*: from the root, follow the child with the highest P-UCB
       ``Q(s, a) + beta(s) * P(a | s) * sqrt(log N(s)) / (1 + N(s'))`` with
       ``beta(s) = log((N(s) + c_base + 1) / c_base) + c`` (eq. 1) while the node is expanded;
    2. *expand*: its ``k`` most likely next tokens become children, with the model's
       probabilities as priors ``P``;
    3. *evaluate*: a rollout completes the selected node (greedy, the paper's beam size 1, or
       ``rollout_sampler``) and the reward scores the completion (the pass rate of the tests);
    4. *back up*: every node on the path counts a visit and keeps the *maximum* reward seen
       below it as ``Q`` (the paper's choice for a deterministic environment).

    ``rollouts`` is the budget; the answer is the best completion any rollout produced (the
    paper returns the program with the highest reward found). As in MCTS-Solver (Winands et
    al. 2008), a subtree whose every completion was scored is not selected again (a finished
    node is scored once), so each rollout learns something new and enough rollouts enumerate
    the whole tree; the search ends early when the root is solved."""

    name: ClassVar[str] = "mcts"
    rollouts: int = 16
    k: int = 3
    c: float = 4.0
    c_base: float = 10.0
    rollout_sampler: Sampling | None = None

    needs_reward: ClassVar[bool] = True

    def validate(self) -> None:
        v.integer("rollouts", self.rollouts, 1, 1 << 20, "the budget of rollouts")
        v.integer("k", self.k, 1, 1024, "children per expansion (top-k tokens)")
        v.number("c", self.c, 0.0, 1e6)
        v.number("c_base", self.c_base, 0.0, 1e12, low_open=True)
        check_sampler(self.rollout_sampler, "rollout_sampler")

    def _pucb(self, parent: Node, child: Node) -> float:
        visits = parent.data["n"]
        beta = math.log((visits + self.c_base + 1) / self.c_base) + self.c
        q = child.data["q"] if child.data["n"] else 0.0
        return q + beta * child.data["prior"] * math.sqrt(math.log(visits)) / (1 + child.data["n"]) if visits > 0 else q

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        root = tree.root
        root.data.update(n=0, q=0.0, prior=1.0)
        completions: list[Node] = []
        for _ in range(self.rollouts):
            # 1. select
            if root.data.get("solved"):
                break  # every completion within reach was scored
            path, node = [root], root
            while node.data.get("children"):
                choices = [child for child in node.data["children"] if not child.data.get("solved")]
                node = max(choices, key=lambda child: self._pucb(path[-1], child))
                path.append(node)
            # 2. expand and 3. evaluate
            if node.finished:
                value = score(tree, reward, prompt, [node])[0]
                node.data["solved"] = True
                completions.append(node)
            else:
                top = tree.top_tokens(node, self.k)
                children = tree.extend([node] * len(top), first=[t for t, _ in top], max_tokens=1)
                for child, (_, logprob) in zip(children, top):
                    child.data.update(n=0, q=0.0, prior=math.exp(logprob))
                node.data["children"] = children
                rollout = tree.extend([node], sampler=self.rollout_sampler)[0]
                value = score(tree, reward, prompt, [rollout])[0]
                completions.append(rollout)
            # 4. back up
            for visited in reversed(path):
                visited.data["q"] = max(visited.data["q"], value) if visited.data["n"] else value
                visited.data["n"] += 1
                children = visited.data.get("children")
                if children and all(child.data.get("solved") for child in children):
                    visited.data["solved"] = True
        best = max(range(len(completions)), key=lambda i: (completions[i].value, -i))
        return completions[best], completions
