"""Searches over reasoning steps scored by a reward: verifier-guided beam search and DVTS.

A step is the text up to and including the next ``boundary`` (a newline by default). Both
searches follow search-and-learn (Beeching et al. 2024, "Scaling test-time compute with open
models"), which reproduces Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be
More Effective than Scaling Model Parameters"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.search.sampling import Sampling
from decodekit.testtime.reward import evaluate
from decodekit.testtime.sampled import _sampler
from decodekit.testtime.tree import Node, check_sampler


def _check(config) -> None:
    v.integer("n", config.n, 1, v.MAX_ROWS, "branches in flight")
    v.integer("beam_width", config.beam_width, 1, config.n, "children per kept branch, at most n")
    if config.n % config.beam_width:
        raise ConfigError("n", config.n, f"a multiple of beam_width={config.beam_width}")
    v.integer("max_steps", config.max_steps, 1, 1 << 16)
    if not isinstance(config.boundary, str) or not config.boundary:
        raise ConfigError("boundary", config.boundary, 'a non-empty string that ends a step, e.g. "\\n"')
    check_sampler(config.sampler)
    check_sampler(config.rollout_sampler, "rollout_sampler")


def _search(config, tree, reward, prompt: str, subtrees: bool) -> tuple[Node, list[Node]]:
    """1. ``n`` first steps from the prompt; 2. score the branches; finished ones become
    candidates; 3. keep the best open ones (the top ``n / beam_width`` overall, or with
    ``subtrees`` the best one of each subtree) and draw ``beam_width`` next steps from each;
    repeat 2-3 up to ``max_steps`` times. The answer is the best-scored candidate."""
    m = config.beam_width
    frontier = tree.extend([tree.root] * config.n, sampler=config.sampler, boundary=config.boundary)
    for i, node in enumerate(frontier):
        node.data["subtree"] = i // m
    candidates: list[Node] = []
    for step in range(config.max_steps):
        evaluate(tree, reward, prompt, frontier, candidates, config.rollout_sampler)
        active, seen = [], set()
        for node in frontier:
            if node.open and node.tokens not in seen:  # a duplicate branch would waste a beam
                seen.add(node.tokens)
                active.append(node)
        if not active or step == config.max_steps - 1:
            break
        order = sorted(range(len(active)), key=lambda i: (-active[i].value, i))
        if subtrees:
            kept, seen = [], set()
            for i in order:
                if active[i].data["subtree"] not in seen:
                    seen.add(active[i].data["subtree"])
                    kept.append(active[i])
        else:
            kept = [active[i] for i in order[: config.n // m]]
        children = tree.extend([node for node in kept for _ in range(m)], sampler=config.sampler, boundary=config.boundary)
        for j, node in enumerate(children):
            node.data["subtree"] = kept[j // m].data["subtree"]
        for node in frontier:
            tree.release(node)  # children hold copies of what they need
        frontier = children
    finished = [node for node in candidates if node.finished]
    pool = finished or [node for node in frontier if node.value is not None] or frontier
    best = max(range(len(pool)), key=lambda i: (pool[i].value if pool[i].value is not None else float("-inf"), -i))
    return pool[best], finished


@dataclass(frozen=True)
class _StepSearch:
    """The settings both step searches share (see :func:`_search`)."""

    n: int = 8
    beam_width: int = 4
    max_steps: int = 40
    boundary: str = "\n"
    sampler: Sampling = field(default_factory=_sampler)
    rollout_sampler: Sampling | None = None

    needs_reward: ClassVar[bool] = True
    subtrees: ClassVar[bool] = False

    def validate(self) -> None:
        _check(self)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        return _search(self, tree, reward, prompt, subtrees=self.subtrees)


@dataclass(frozen=True)
class RewardBeamSearch(_StepSearch):
    """Beam search over reasoning steps guided by a reward (search-and-learn's "beam search",
    Snell et al. 2024 §5): ``n`` branches; after every step the ``n / beam_width`` best open
    branches are kept (identical branches count once) and each draws ``beam_width`` next
    steps. A process reward scores prefixes directly; an outcome reward scores each prefix's
    completion (greedy, or drawn with ``rollout_sampler``), which also becomes a candidate.
    ``max_steps``: steps at most."""

    name: ClassVar[str] = "reward_beam"


@dataclass(frozen=True)
class DVTS(_StepSearch):
    """Diverse Verifier Tree Search (Beeching et al. 2024): the ``n`` branches form
    ``n / beam_width`` independent subtrees; each keeps only its own best branch after every
    step and draws ``beam_width`` next steps from it, so one strong prefix cannot take over
    the whole budget. Otherwise as :class:`RewardBeamSearch`."""

    name: ClassVar[str] = "dvts"
    subtrees: ClassVar[bool] = True
