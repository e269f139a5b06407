"""Searches over independent samples: best-of-N (with majority votes) and First Finish Search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.search.sampling import Sampling
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node, check_sampler

VOTES = ("max", "majority", "weighted")


def _sampler() -> Sampling:
    return Sampling(temperature=0.8, top_p=0.95)


@dataclass(frozen=True)
class BestOfN:
    """Draw ``n`` completions (one batched decoding sharing the prompt's prefill) and return
    one by ``vote``:

    - ``"max"``: the highest reward (best-of-N rejection sampling, Nakano et al. 2021,
      "WebGPT"; search-and-learn's "best-of-N");
    - ``"majority"``: self-consistency (Wang et al. 2023): completions are grouped by
      ``answer(text)``, the largest group wins;
    - ``"weighted"``: weighted majority vote (Li et al. 2023, "Making Language Models Better
      Reasoners with Step-Aware Verifier"): the group with the largest summed reward wins.

    Within the winning group the highest reward is returned; ties go to the earlier sample."""

    name: ClassVar[str] = "best_of_n"
    n: int = 8
    sampler: Sampling = field(default_factory=_sampler)
    vote: str = "max"
    answer: Callable[[str], object] | None = None

    needs_reward: ClassVar[bool] = True

    def validate(self) -> None:
        v.integer("n", self.n, 1, v.MAX_ROWS, "samples")
        check_sampler(self.sampler)
        v.choice("vote", self.vote, VOTES)
        if self.vote != "max" and not callable(self.answer):
            raise ConfigError("answer", self.answer, f"a callable text -> answer for vote={self.vote!r}")

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        samples = tree.extend([tree.root] * self.n, sampler=self.sampler)
        score(tree, reward, prompt, samples)
        best = max(range(self.n), key=lambda i: (samples[i].value, -i))
        if self.vote != "max":
            groups: dict[object, list[int]] = {}
            for i, node in enumerate(samples):
                groups.setdefault(self.answer(node.text), []).append(i)
            weight = len if self.vote == "majority" else (lambda members: sum(samples[i].value for i in members))
            winner = max(groups.values(), key=lambda members: (weight(members), -members[0]))
            best = max(winner, key=lambda i: (samples[i].value, -i))
        return samples[best], samples


@dataclass(frozen=True)
class FirstFinishSearch:
    """First Finish Search (Agarwal et al. 2025, "First Finish Search: Efficient Test-Time
    Scaling in Large Language Models"): ``n`` samples decode in parallel and decoding stops as
    soon as ``k`` of them have finished; the others are discarded (finish reason ``cut``), so
    the compute is ``n`` times the length of the k-th shortest sample, not of the longest.
    With ``k = 1`` the first finished sample is the answer (the paper's rule: shorter traces
    are more often right); with ``k > 1`` the finished ones are ranked by the reward when one
    is given, else the first to finish wins. Samples finishing at the same step rank by
    reward, then by index."""

    name: ClassVar[str] = "first_finish"
    n: int = 8
    k: int = 1
    sampler: Sampling = field(default_factory=_sampler)

    needs_reward: ClassVar[bool] = False

    def validate(self) -> None:
        v.integer("n", self.n, 1, v.MAX_ROWS, "samples")
        v.integer("k", self.k, 1, self.n, "finished samples to wait for, at most n")
        check_sampler(self.sampler)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        samples = tree.extend([tree.root] * self.n, sampler=self.sampler, stop_after=self.k)
        done = [i for i, node in enumerate(samples) if node.finish != "cut"]
        if reward is not None:
            score(tree, reward, prompt, [samples[i] for i in done])

        def rank(i: int):
            # Subtle: the first to finish is the shortest; then the reward; then the index
            value = samples[i].value if reward is not None else 0.0
            first = len(samples[i].tokens) if reward is None or self.k == 1 else 0
            return (-first, value, -i)

        best = max(done, key=rank)
        return samples[best], [samples[i] for i in done]
