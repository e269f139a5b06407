"""AdaDec: greedy decoding that pauses where the model is uncertain and re-ranks its top
candidates by a short lookahead.

He, Liu, Wang, Li, Wang, Peng and Zheng (2025), "Towards Better Code Generation: Adaptive
Decoding with Uncertainty Guidance" (arXiv 2506.08980), as its authors' release does it:

- the uncertainty of a step is the Shannon entropy (nats) of the model's next-token
  distribution, ``H = -sum_v p(v) log p(v)``;
- below the threshold ``H*`` the step is greedy; at or above it decoding pauses: each of the
  ``candidates`` most likely tokens ``c`` is extended by a greedy lookahead of up to
  ``lookahead`` tokens ``y_1..y_n`` and scored by the mean log-probability
  ``S(c) = (log p(c) + sum_j log p(y_j | ...)) / (n + 1)``; the best candidate is kept (one
  token: its lookahead is discarded) and greedy decoding resumes;
- ``H*`` is learned per model (:func:`learn_threshold`): teacher-force reference code, label
  each position by whether the greedy token is the reference token, fit a logistic regression
  of that label on the entropy (classes balanced by down-sampling), pick the probability
  cut-off ``p*`` that classifies a held-out fifth best, and return the entropy where the fit
  crosses it, ``H* = (logit(p*) - b) / w``.

Lookaheads fork the paused prefix's cache rows (:class:`~decodekit.testtime.tree.Tree`): all
candidates look ahead in one batch, and nothing is encoded twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, InputError
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """``(..., vocab)`` logits -> ``(...)`` Shannon entropy (nats) of their softmax."""
    logprobs = logits.float().log_softmax(-1)
    return -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(-1)


@dataclass(frozen=True)
class AdaDec:
    """``threshold``: the entropy ``H*`` (nats) at or above which decoding pauses (learn it
    with :func:`learn_threshold`; the authors' fixed-threshold ablation uses 1.0);
    ``candidates``: tokens re-ranked at a pause; ``lookahead``: greedy tokens after each;
    ``lookahead_stop``: a string that also ends a lookahead (e.g. ``"\\n"``: to the end of the
    line, the paper's dynamic-length variant); ``max_pauses``: pauses allowed per completion
    (None: no limit; past it, decoding is plain greedy)."""

    name: ClassVar[str] = "adadec"
    threshold: float = 1.0
    candidates: int = 3
    lookahead: int = 5
    lookahead_stop: str | None = None
    max_pauses: int | None = None

    needs_reward: ClassVar[bool] = False

    def validate(self) -> None:
        v.number("threshold", self.threshold, 0.0, 1e4, what="entropy in nats")
        v.integer("candidates", self.candidates, 1, 1024, "tokens re-ranked at a pause")
        v.integer("lookahead", self.lookahead, 0, 1 << 16, "greedy tokens after each candidate")
        if self.lookahead_stop is not None and (not isinstance(self.lookahead_stop, str) or not self.lookahead_stop):
            raise ConfigError("lookahead_stop", self.lookahead_stop, "a non-empty string, or None")
        if self.max_pauses is not None:
            v.integer("max_pauses", self.max_pauses, 0, 1 << 20, "or None for no limit")

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        node, pauses = tree.root, 0
        while node.open:
            allowed = self.max_pauses is None or pauses < self.max_pauses
            if allowed and float(entropy(tree.logprobs(node))) >= self.threshold:
                node = self._rerank(tree, node)
                pauses += 1
                continue
            trigger = (lambda logits: entropy(logits) >= self.threshold) if allowed else None
            child = tree.extend([node], pause=trigger)[0]
            tree.release(node)
            node = child
        node.data["pauses"] = pauses
        if reward is not None:
            score(tree, reward, prompt, [node])
        return node, [node] if reward is not None else []

    def _rerank(self, tree, node: Node) -> Node:
        """The candidate whose lookahead has the highest mean log-probability (ties: the more
        likely candidate)."""
        tokens = [token for token, _ in tree.top_tokens(node, self.candidates)]
        children = tree.extend([node] * len(tokens), first=tokens, max_tokens=1)
        tree.release(node)
        ahead = [c for c in children if c.open]
        looks = dict(zip(map(id, ahead), tree.extend(ahead, max_tokens=self.lookahead, boundary=self.lookahead_stop))) if ahead and self.lookahead else {}
        base = len(node.tokens)

        def mean(child: Node) -> float:
            end = looks.get(id(child), child)
            return (end.logprob - node.logprob) / (len(end.tokens) - base)

        best = max(range(len(children)), key=lambda i: (mean(children[i]), -i))
        for i, child in enumerate(children):
            if id(child) in looks:
                tree.release(looks[id(child)])
            if i != best:
                tree.release(child)
        chosen = children[best]
        chosen.finish = chosen.finish if chosen.finished else None  # open again: greedy goes on
        return chosen


@dataclass(frozen=True)
class Calibration:
    """A learned threshold and the fit behind it: ``weight``/``bias`` of the logistic
    regression ``P(greedy token is right) = sigmoid(weight * H + bias)``, the cut-off
    ``p*``, its accuracy on the held-out positions, and how many positions were used."""

    threshold: float
    weight: float
    bias: float
    cutoff: float
    accuracy: float
    positions: int


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """L2-regularised logistic regression of ``y`` on ``x`` (the weight penalised by
    ``w^2 / 2``, the intercept not: the usual default), by Newton's method (a 2x2 system)."""
    w = torch.zeros(2, dtype=torch.float64)
    features = torch.stack([x, torch.ones_like(x)], 1).double()
    target = y.double()
    ridge = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    for _ in range(100):
        p = torch.sigmoid(features @ w)
        gradient = features.T @ (p - target) + ridge @ w
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + ridge + 1e-9 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


def learn_threshold(decoder, samples: Sequence, *, seed: int = 0, batch_size: int = 8) -> Calibration:
    """Learn AdaDec's entropy threshold for ``decoder``'s model from reference code.

    ``samples``: ``(prompt, reference completion)`` pairs, or texts (each text's first token
    is its prompt). Every reference position contributes its entropy and whether the greedy
    token equals the reference token."""
    from decodekit.teacher import forward_distributions

    pairs = []
    for i, sample in enumerate(samples):
        if isinstance(sample, str):
            ids = decoder.encode(sample) if sample else []
            if len(ids) < 2:
                raise InputError(f"samples: text {i} has fewer than 2 tokens")
            pairs.append((ids[:1], ids[1:]))
        elif isinstance(sample, tuple | list) and len(sample) == 2:
            prompt, completion = decoder.encode(sample[0]), decoder.encode(sample[1])
            if not prompt or not completion:
                raise InputError(f"samples: item {i} has an empty prompt or completion")
            pairs.append((prompt, completion))
        else:
            raise InputError(f"samples: item {i} is neither a text nor a (prompt, completion) pair")
    v.integer("batch_size", batch_size, 1, 1 << 16)
    entropies, right = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        with decoder.engine.exclusive():
            dists = forward_distributions(decoder.model, [p for p, _ in chunk], [c for _, c in chunk])
        for (_, completion), logprobs in zip(chunk, dists):
            entropies.append(entropy(logprobs))
            right.append(logprobs.argmax(-1) == torch.tensor(completion))
    if not entropies:
        raise InputError("samples: at least one sample is needed")
    x, y = torch.cat(entropies).double(), torch.cat(right)
    order = list(range(len(x)))
    rng = random.Random(seed)
    rng.shuffle(order)
    cut = max(1, len(order) // 5)
    test, train = torch.tensor(order[:cut]), torch.tensor(order[cut:])
    positive, negative = train[y[train]].tolist(), train[~y[train]].tolist()
    if not positive or not negative or len(train) < 2:
        raise InputError("samples: the greedy token must be right at some reference positions and wrong at others")
    size = min(len(positive), len(negative))
    balanced = torch.tensor(rng.sample(positive, size) + rng.sample(negative, size))
    weight, bias = _fit(x[balanced], y[balanced].double())
    if weight >= 0:
        raise InputError("samples: on these samples higher entropy does not predict a wrong greedy token (fitted weight >= 0); no threshold follows")
    best = None
    for cutoff in [i / 100 for i in range(1, 100)]:
        predicted = torch.sigmoid(weight * x[test] + bias) >= cutoff
        accuracy = float((predicted == y[test]).double().mean())
        if best is None or accuracy > best[1]:
            best = (cutoff, accuracy)
    cutoff, accuracy = best
    threshold = (math.log(cutoff / (1 - cutoff)) - bias) / weight
    return Calibration(max(0.0, threshold), weight, bias, cutoff, accuracy, len(x))
