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
    the whole tree; the search ends early when the root is solved. ``parallel > 1`` selects
    that many distinct leaves per iteration (pending selections count as visits: virtual
    loss, Chaslot et al. 2008), expands them in one forward and rolls them out in one batch;
    ``parallel=1`` is the paper's sequential search."""

    name: ClassVar[str] = "mcts"
    rollouts: int = 16
    k: int = 3
    c: float = 4.0
    c_base: float = 10.0
    rollout_sampler: Sampling | None = None
    parallel: int = 1

    needs_reward: ClassVar[bool] = True

    def validate(self) -> None:
        v.integer("rollouts", self.rollouts, 1, 1 << 20, "the budget of rollouts")
        v.integer("k", self.k, 1, 1024, "children per expansion (top-k tokens)")
        v.number("c", self.c, 0.0, 1e6)
        v.number("c_base", self.c_base, 0.0, 1e12, low_open=True)
        check_sampler(self.rollout_sampler, "rollout_sampler")
        v.integer("parallel", self.parallel, 1, 1024, "leaves selected, expanded and rolled out together")

    def _pucb(self, parent: Node, child: Node) -> float:
        # ``pending``: selections of this batch not yet backed up count as visits (virtual
        # loss), so the batch's selections spread over different leaves
        visits = parent.data["n"] + parent.data["pending"]
        seen = child.data["n"] + child.data["pending"]
        beta = math.log((visits + self.c_base + 1) / self.c_base) + self.c
        q = child.data["q"] if child.data["n"] else 0.0
        return q + beta * child.data["prior"] * math.sqrt(math.log(visits)) / (1 + seen) if visits > 0 else q

    def _select(self, root: Node) -> list[Node] | None:
        """The path to the leaf P-UCB picks, or None when nothing is left to pick."""
        path, node = [root], root
        while node.data.get("children"):
            choices = [
                child for child in node.data["children"]
                if not child.data.get("solved") and not (child.data["pending"] and not child.data.get("children"))
            ]
            if not choices:
                return None
            node = max(choices, key=lambda child: self._pucb(path[-1], child))
            path.append(node)
        return None if node.data["pending"] else path

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        root = tree.root
        root.data.update(n=0, q=0.0, prior=1.0, pending=0)
        completions: list[Node] = []
        done = 0
        while done < self.rollouts and not root.data.get("solved"):
            # 1. select up to ``parallel`` distinct leaves
            paths = []
            while len(paths) < min(self.parallel, self.rollouts - done):
                path = self._select(root)
                if path is None:
                    break
                for node in path:
                    node.data["pending"] += 1
                paths.append(path)
            if not paths:
                break
            leaves = [path[-1] for path in paths]
            growing = [leaf for leaf in leaves if not leaf.finished]
            # 2. expand every open leaf (one forward), 3. roll them out (one batch), score all
            tops = [tree.top_tokens(leaf, self.k) for leaf in growing]
            children = tree.extend([leaf for leaf, top in zip(growing, tops) for _ in top], first=[t for top in tops for t, _ in top], max_tokens=1)
            at = 0
            for leaf, top in zip(growing, tops):
                leaf.data["children"] = children[at : at + len(top)]
                for child, (_, logprob) in zip(leaf.data["children"], top):
                    child.data.update(n=0, q=0.0, prior=math.exp(logprob), pending=0)
                at += len(top)
            rollouts = dict(zip(map(id, growing), tree.extend(growing, sampler=self.rollout_sampler))) if growing else {}
            for leaf in growing:
                tree.release(leaf)  # never extended again: selection continues in its children
            judged = [rollouts.get(id(leaf), leaf) for leaf in leaves]
            values = score(tree, reward, prompt, judged)
            completions.extend(judged)
            # 4. back up
            for path, value in zip(paths, values):
                if path[-1].finished:
                    path[-1].data["solved"] = True
                for visited in reversed(path):
                    visited.data["pending"] -= 1
                    visited.data["q"] = max(visited.data["q"], value) if visited.data["n"] else value
                    visited.data["n"] += 1
                    children = visited.data.get("children")
                    if children and all(child.data.get("solved") for child in children):
                        visited.data["solved"] = True
            done += len(paths)
        best = max(range(len(completions)), key=lambda i: (completions[i].value, -i))
        return completions[best], completions
