"""Rewards: what a test-time search maximises.

Every reward has ``kind`` and ``score(prompt, completions) -> list[float]`` (one float per
completion, batched so a model-based reward scores many in one forward):

- ``"outcome"``: judges a finished completion (:class:`OutcomeReward`, the sandboxed
  :class:`~decodekit.testtime.executable.ExecutableReward`);
- ``"process"``: judges a prefix too, e.g. after every reasoning step (:class:`ProcessReward`,
  :class:`ClassifierPRM`). Searches that rank partial completions by an outcome reward instead
  complete each prefix greedily first and score the completion (:func:`evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from decodekit.errors import ConfigError, InputError

KINDS = ("outcome", "process")


@runtime_checkable
class Reward(Protocol):
    kind: str

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]: ...


class _Callable:
    def __init__(self, fn: Callable[[str, str], float]):
        if not callable(fn):
            raise ConfigError("reward", fn, "a callable (prompt, completion) -> float")
        self.fn = fn

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        return [self.fn(prompt, c) for c in completions]  # checked by score()


class OutcomeReward(_Callable):
    """``fn(prompt, completion) -> float`` on finished completions."""

    kind = "outcome"


class ProcessReward(_Callable):
    """``fn(prompt, prefix) -> float`` on prefixes (after each step) and finished completions."""

    kind = "process"


class ClassifierPRM:
    """A transformers sequence-classification model used as a process reward model: the score
    of ``prompt + prefix`` is the softmax probability of label ``label`` (or, for a model with
    one output, its sigmoid). Many prefixes are scored in one batched forward of up to
    ``batch_size`` texts (right-padded with the tokenizer's pad token)."""

    kind = "process"

    def __init__(self, model, tokenizer, *, label: int = 1, batch_size: int = 32, max_length: int | None = None):
        labels = int(getattr(model.config, "num_labels", 1))
        if not 0 <= label < max(labels, 2) or (labels == 1 and label != 1):
            raise ConfigError("label", label, f"an output index of the classifier (it has {labels} labels; 1 for a single-logit model)")
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        if tokenizer.pad_token_id is None:
            raise InputError("ClassifierPRM: the tokenizer has no pad token; set tokenizer.pad_token")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # the model finds each row's last token by it
        self.model, self.tokenizer = model.eval(), tokenizer
        self.label, self.batch_size, self.max_length, self.single = label, batch_size, max_length, labels == 1
        self.forwards = 0

    @torch.inference_mode()
    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        out: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(completions), self.batch_size):
            texts = [prompt + c for c in completions[start : start + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None, max_length=self.max_length)
            logits = self.model(**batch.to(device)).logits.float()
            self.forwards += 1
            values = logits[:, 0].sigmoid() if self.single else logits.softmax(-1)[:, self.label]
            out.extend(values.tolist())
        return out


def as_reward(reward) -> Reward:
    """A reward object, or a bare callable taken as an outcome reward."""
    if isinstance(reward, Reward) and getattr(reward, "kind", None) in KINDS:
        return reward
    if callable(reward) and not hasattr(reward, "score"):
        return OutcomeReward(reward)
    raise ConfigError("reward", reward, "an OutcomeReward, ProcessReward, ClassifierPRM, ExecutableReward, an object with kind ('outcome' or 'process') and score(prompt, completions), or a callable (prompt, completion) -> float")


def score(tree, reward: Reward, prompt: str, nodes: Sequence) -> list[float]:
    """Score ``nodes``' texts with ``reward`` in one call; counted in ``tree.compute``."""
    if not nodes:
        return []
    values = reward.score(prompt, [node.text for node in nodes])
    if len(values) != len(nodes):
        raise InputError(f"reward.score returned {len(values)} values for {len(nodes)} completions")
    tree.compute.reward_calls += len(nodes)
    tree.compute.reward_batches += 1
    for node, value in zip(nodes, values):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"reward.score returned {value!r} for completion {node.text!r}: a number is needed") from None
        if value != value:
            raise InputError(f"reward.score returned NaN for completion {node.text!r}")
        node.value = value
    return [node.value for node in nodes]


def evaluate(tree, reward: Reward, prompt: str, nodes: Sequence, finished: list, sampler=None) -> list[float]:
    """The value of each node: a process reward scores the prefix itself; an outcome reward
    scores the node's completion (greedy, or drawn with ``sampler``; one batched rollout for
    all open nodes). Every finished completion met on the way is appended to ``finished`` (it
    is a candidate answer, already scored)."""
    if reward.kind == "process":
        values = score(tree, reward, prompt, nodes)
        finished.extend(node for node in nodes if node.finished)
        return values
    open_nodes = [node for node in nodes if node.open]
    rollouts = dict(zip(map(id, open_nodes), tree.extend(open_nodes, sampler=sampler))) if open_nodes else {}
    judged = [rollouts.get(id(node), node) for node in nodes]
    unique = list({id(n): n for n in judged}.values())
    score(tree, reward, prompt, unique)
    finished.extend(unique)
    for node, judge in zip(nodes, judged):
        node.value = judge.value
    return [node.value for node in nodes]
