"""OPERA: beam search with an over-trust penalty from the model's self-attention, and
retrospection that rolls back to a prefix when the same token keeps gathering attention.

Huang et al. (CVPR 2024), "OPERA: Alleviating Hallucination in Multi-Modal Large Language
Models via Over-Trust Penalty and Retrospection-Allocation", as its authors' release computes
it, for text-only decoder-only models:

- **Candidates**: each beam's ``candidates`` most likely next tokens.
- **Knowledge aggregation**: each response token's attention row (last layer, the max over
  heads, renormalised over all keys) over the response so far, candidate row included, forms
  a lower-triangular window ``W``; the column score of response position ``j`` is
  ``1e-7 * prod_{i >= j} scale * W[i, j]`` (computed in log space, so it neither overflows nor
  underflows), ``phi`` is the largest column score and ``c`` its column (the "summary" token
  that aggregates the attention). ``window`` limits the columns to the last ``window``
  response tokens (None: the whole response, as the release does).
- **Over-trust penalty**: a candidate's logit becomes ``logit - alpha * phi``; each beam's step
  log-probability is the softmax over its candidates of those logits. No penalty while the
  window holds at most ``warmup`` tokens (the release rewards attention to the image there;
  a text-only model has none).
- **Retrospection**: every beam's lineage records, per step, the most common ``c`` of its
  candidates. When the most common of the beams' latest ``c``, ``s``, appears more than
  ``rollback_threshold`` times in every beam's lineage (and ``s >= warmup``), decoding returns to the
  beams that were about to choose response token ``s + 1`` (``s`` once that position was
  retried ``candidates`` times; neither: no rollback) and re-chooses that step with plain beam
  search over the whole vocabulary, without the tokens chosen there before. Finished
  hypotheses found after that point are forgotten with the steps that found them.

Deviations, stated: the lineage (not the beam slot) holds the history of ``c``; a candidate
that ends its completion (EOS) gets no penalty (no forward is spent on it, so it has no
attention row); hypotheses are length-normalised by the generated length (decodekit's
convention). Cost: every candidate of every beam is one row of a batched forward with eager
attention, i.e. ``num_beams * candidates`` rows per step instead of ``num_beams``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node

_LOG_FLOOR = math.log(1e-7)
_MAX_LOG = 80.0  # phi <= e^80: a huge but finite penalty keeps the candidates ordered


def attention_row(weights: torch.Tensor) -> torch.Tensor:
    """``(layers, heads, keys)`` -> ``(keys,)``: the last layer, max over heads, renormalised."""
    row = weights[-1].max(0).values.double()
    return row / row.sum().clamp(min=1e-300)


def column_scores(previous: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """``previous``: ``(t + 1,)`` per column ``j``, ``sum_{i=j}^{t-1} log(scale W[i, j])`` of
    the response so far (0 for column ``t``); ``rows``: ``(n, t + 1)`` candidate rows over the
    response columns. Returns ``(n, t + 1)`` log column scores ``log(1e-7 prod ...)``."""
    return _LOG_FLOOR + previous[None, :] + (scale * rows).log()


def penalty_and_summary(log_scores: torch.Tensor, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, t + 1)`` log column scores -> ``(n,)`` phi (the largest column score) and
    ``(n,)`` its column, over the last ``window`` columns (None: all)."""
    if window is not None and log_scores.shape[1] > window:
        offset = log_scores.shape[1] - window
        best, column = log_scores[:, offset:].max(1)
        column = column + offset
    else:
        best, column = log_scores.max(1)
    return best.clamp(max=_MAX_LOG).exp(), column


def rollback_target(locs: list[list[int]], threshold: int, warmup: int, retries: Counter, limit: int, steps: int) -> int | None:
    """The response position to return to, or None. ``locs``: each beam's lineage of summary
    columns; ``retries``: rollbacks so far per position; ``steps``: tokens chosen so far."""
    latest = Counter(lineage[-1] for lineage in locs if lineage)
    if not latest:
        return None
    s = latest.most_common(1)[0][0]
    if s < warmup or not all(lineage.count(s) > threshold for lineage in locs):
        return None
    for position in (s + 1, s):
        if position < steps and retries[position] < limit:
            return position
    return None


@dataclass(frozen=True)
class OPERA:
    """``num_beams`` beams; ``candidates``: tokens per beam (N_can); ``alpha``: penalty
    weight; ``scale``: sigma, the attention scale; ``rollback_threshold``: r, the count of one summary
    position that triggers retrospection; ``window``: columns scored (None: the response);
    ``warmup``: response length before the penalty and retrospection apply;
    ``length_penalty``: finished hypotheses score ``sum / length ** length_penalty``.
    Defaults are the release's (5, 5, 1, 50, 15)."""

    name: ClassVar[str] = "opera"
    num_beams: int = 5
    candidates: int = 5
    alpha: float = 1.0
    scale: float = 50.0
    rollback_threshold: int = 15
    window: int | None = None
    warmup: int = 10
    length_penalty: float = 1.0

    needs_reward: ClassVar[bool] = False
    attention: ClassVar[str] = "self"

    def validate(self) -> None:
        v.integer("num_beams", self.num_beams, 1, 1024)
        v.integer("candidates", self.candidates, 1, 4096, "tokens per beam")
        v.number("alpha", self.alpha, 0.0, 1e6)
        v.number("scale", self.scale, 0.0, 1e6, low_open=True)
        v.integer("rollback_threshold", self.rollback_threshold, 0, 1 << 20)
        if self.window is not None:
            v.integer("window", self.window, 1, 1 << 20, "response tokens, or None for all")
        v.integer("warmup", self.warmup, 0, 1 << 20)
        v.number("length_penalty", self.length_penalty, -50.0, 50.0)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        K, P = self.num_beams, len(tree.prompt)
        root = tree.root
        root.data.update(score=0.0, columns=torch.zeros(1, dtype=torch.float64), locs=[], penalties=[])
        beams, pool, t, plain = [root], [], 0, False
        history: list[tuple[list[tuple], list[tuple]]] = []  # per step: beams' data, pool
        chosen: dict[int, list[tuple[int, int]]] = {}  # per step: (beam index, token) kept
        banned: dict[int, set[tuple[int, int]]] = {}
        retries: Counter = Counter()
        while beams and t < tree.max_new_tokens:
            del history[t:]
            history.append(([(b.tokens, b.logprob, b.token_logprobs, dict(b.data)) for b in beams], list(pool)))
            parents, tokens = self._expansions(tree, beams, banned.get(t, set()) if plain else None)
            children = tree.extend([beams[i] for i in parents], first=tokens, max_tokens=1)
            step = self._step_scores(tree, beams, parents, tokens, children, t, P, plain)
            order = sorted(range(len(children)), key=lambda i: (-(beams[parents[i]].data["score"] + step[i]), i))
            kept, picks = [], []
            for rank, i in enumerate(order):
                child = children[i]
                total = beams[parents[i]].data["score"] + step[i]
                if child.finished:
                    if rank < K:
                        child.value = total / (t + 1) ** self.length_penalty
                        pool.append(child)
                elif len(kept) < K:
                    kept.append(child)
                    picks.append((parents[i], tokens[i]))
                    child.data["score"] = total
                    continue
                if child.open:
                    tree.release(child)
            for beam in beams:
                tree.release(beam)
            chosen[t] = picks
            beams, t = kept, t + 1
            pool = sorted(pool, key=lambda n: -n.value)[:K]
            target = None if plain else rollback_target([b.data["locs"] for b in beams], self.rollback_threshold, self.warmup, retries, self.candidates, t)
            plain = False
            if target is not None:
                for beam in beams:
                    tree.release(beam)
                retries[target] += 1
                banned.setdefault(target, set()).update(chosen[target])
                saved, pool = history[target]
                beams = tree.rebuild([(tokens, logprob, steps) for tokens, logprob, steps, _ in saved])
                for beam, (_, _, _, data) in zip(beams, saved):
                    beam.data.update(data)
                t, plain = target, True
                continue
            if len(pool) >= K and beams:
                best_running = max(b.data["score"] for b in beams) / t ** self.length_penalty
                if best_running <= min(n.value for n in pool):
                    break
        for beam in beams:
            beam.value = beam.data["score"] / max(1, len(beam.tokens)) ** self.length_penalty
        finished = sorted(pool, key=lambda n: -n.value) or sorted(beams, key=lambda n: -n.value)
        best = finished[0]
        best.data["rollbacks"] = sum(retries.values())
        if reward is not None:
            score(tree, reward, prompt, finished)
        return best, finished

    def _expansions(self, tree, beams: list[Node], banned: set | None) -> tuple[list[int], list[int]]:
        """(beam index, token) pairs to expand: each beam's top candidates, or, in a plain
        step after a rollback, each beam's top ``2K`` tokens but those banned there."""
        parents, tokens = [], []
        for b, beam in enumerate(beams):
            if banned is None:
                top = tree.top_tokens(beam, self.candidates)
            else:
                extra = sum(1 for parent, _ in banned if parent == b)
                top = [(tok, lp) for tok, lp in tree.top_tokens(beam, 2 * self.num_beams + extra) if (b, tok) not in banned][: 2 * self.num_beams]
            parents += [b] * len(top)
            tokens += [tok for tok, _ in top]
        return parents, tokens

    def _step_scores(self, tree, beams, parents, tokens, children, t: int, P: int, plain: bool) -> list[float]:
        """Each child's step score (penalised, restricted log-prob; plain: its log-prob); sets
        open children's column sums and lineage of summary columns."""
        logprobs = [float(tree.logprobs(beams[b])[tok]) for b, tok in zip(parents, tokens)]
        rows, where = [], []
        for i, child in enumerate(children):
            if child.open:
                rows.append(attention_row(tree.attention_of(child))[P : P + t + 1])
                where.append(i)
        phi = [0.0] * len(children)
        columns: dict[int, tuple[torch.Tensor, int]] = {}
        for i, row in zip(where, rows):
            previous = beams[parents[i]].data["columns"]
            log_scores = column_scores(previous, row[None, :], self.scale)
            value, column = penalty_and_summary(log_scores, self.window)
            columns[i] = (torch.cat([log_scores[0] - _LOG_FLOOR, torch.zeros(1, dtype=torch.float64)]), int(column[0]))
            phi[i] = float(value[0]) if t + 1 > self.warmup and not plain else 0.0
        modes = {}
        for b in set(parents):
            locs = [columns[i][1] for i in range(len(children)) if parents[i] == b and i in columns]
            modes[b] = Counter(locs).most_common(1)[0][0] if locs else None
        for i, child in enumerate(children):
            if i not in columns:  # finished at once: no attention row, no penalty
                child.data["penalties"] = list(beams[parents[i]].data["penalties"])
            else:
                mode = columns[i][1] if plain else modes[parents[i]]
                parent = beams[parents[i]].data
                child.data.update(columns=columns[i][0], locs=[*parent["locs"], mode], penalties=[*parent["penalties"], phi[i]])
        if plain:
            return logprobs
        out = []
        for b in sorted(set(parents)):
            members = [i for i in range(len(children)) if parents[i] == b]
            penalised = torch.tensor([logprobs[i] - self.alpha * phi[i] for i in members], dtype=torch.float64)
            out += list(zip(members, penalised.log_softmax(0).tolist()))
        return [value for _, value in sorted(out)]
