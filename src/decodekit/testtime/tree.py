"""The search tree every test-time strategy grows: branches that share their prefix's cache.

A :class:`Tree` prefills its prompt once. Every :class:`Node` is a partial (or finished)
completion; an open node's next-token logits and key/value cache live in one row of a model
state. :meth:`Tree.extend` grows many nodes at once, one batched forward per token for all of
them: children *fork* their parent's row (``LanguageModel.fork``, a copy of the row's cache),
so no prefix is ever encoded again, and rows of different states are merged into one batch
where the model allows (``can_merge``). A branch that ends leaves the batch at once (its row is
selected out), so no forward is spent on it. An abandoned node :meth:`~Tree.release` s its
row; a state is freed when no node holds one of its rows.

Compute is counted the same way for every strategy (:class:`Compute`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence

import torch

from decodekit.engine.limits import model_error
from decodekit.errors import ConfigError, DecodeKitError, InputError, NumericalError
from decodekit.search.base import race
from decodekit.search.sampling import Sampling
from decodekit.testtime.node import TERMINAL, Compute, Node, check_sampler  # noqa: F401  (the tree's public names)


class Tree:
    """Branches of one prompt. ``model``: a :class:`~decodekit.model.base.LanguageModel` with
    ``fork``; ``decode(ids) -> str``; ``max_new_tokens``: the longest completion; ``stop``:
    stop strings (a completion ends before the first); ``eos``: end-of-sequence ids;
    ``seed``: seeds every draw of the search (same seed, same tree); ``lock()``: a context
    manager held while the model runs (the engine's :meth:`~decodekit.engine.Engine.exclusive`)."""

    def __init__(
        self,
        model,
        prompt: Sequence[int],
        decode: Callable[[list[int]], str],
        *,
        max_new_tokens: int,
        eos: Sequence[int] = (),
        stop: Sequence[str] = (),
        seed: int = 0,
        lock: Callable[[], contextlib.AbstractContextManager] | None = None,
        attention: str | None = None,
    ):
        if not hasattr(model, "fork"):
            raise InputError(f"{type(model).__name__} cannot fork rows; test-time search needs LanguageModel.fork")
        vocab = getattr(model, "vocab_size", None)
        if not prompt or (vocab is not None and not all(0 <= int(i) < vocab for i in prompt)):
            raise InputError(f"prompt: needs at least one token, every id in [0, {vocab})")
        limit = getattr(model, "max_length", None)
        if limit is not None and len(prompt) + max_new_tokens > limit:
            raise ConfigError("max_new_tokens", max_new_tokens, f"at most {limit - len(prompt)}: the model attends over {limit} positions and the prompt has {len(prompt)}")
        if attention is not None:
            refusal = model.attention_refusal(attention) if hasattr(model, "attention_refusal") else "a transformers model (decodekit's adapter records attention weights)"
            if refusal is not None:
                raise ConfigError("strategy", attention + "-attention", refusal)
        self.attention = attention
        self.model, self.decode, self.max_new_tokens = model, decode, max_new_tokens
        self.prompt = list(prompt)
        self.eos, self.stop = frozenset(int(e) for e in eos), tuple(stop)
        # a stop string of c characters spans at most c tokens, plus split multi-byte ones
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 4
        self.lock = lock or contextlib.nullcontext
        self.generator = torch.Generator().manual_seed(seed)
        self.compute = Compute(forwards=1, prefill_tokens=len(prompt))
        self._began = time.perf_counter()
        with self._model("prefill"):
            state = model.start([list(prompt)], max_new_tokens, **self._record())
        self._check(state.logits, 0)
        self._prompt_hidden = state.extra.get("prompt_hidden", torch.empty(0))[0] if attention == "hidden" else None
        self.root = Node((), 0.0, None, "", _state=state, _row=0)

    # -- growing ----------------------------------------------------------------------------

    def extend(
        self,
        nodes: Sequence[Node],
        *,
        sampler: Sampling | None = None,
        boundary: str | None = None,
        max_tokens: int | None = None,
        first: Sequence[int] | None = None,
        stop_after: int | None = None,
        pause: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[Node]:
        """One child per entry of ``nodes`` (repeat a node for several children), in order.

        Each branch draws tokens (greedy, or ``sampler``'s warped distribution with the tree's
        generator) until it finishes (EOS, a stop string, ``max_new_tokens``), ends a step
        (its text since the parent gained ``boundary``), or drew ``max_tokens``. ``first``:
        the first token of each branch, given instead of drawn (expansion by top-k tokens).
        ``stop_after``: end the whole extension once that many branches finished; the rest
        are ``"cut"`` (First Finish Search). ``pause``: ``(rows, vocab)`` next-token logits ->
        ``(rows,)`` bool; a branch whose next distribution it flags ends open (``"pause"``)
        before drawing from it (AdaDec's uncertainty trigger). Every node must be open."""
        for node in nodes:
            if not node.open:
                raise InputError(f"node finished ({node.finish}) or released: it cannot be extended")
        if first is not None and len(first) != len(nodes):
            raise InputError(f"first: {len(first)} tokens for {len(nodes)} nodes")
        limit = math.inf if max_tokens is None else max_tokens
        out: list[Node | None] = [None] * len(nodes)
        warpers = sampler.warpers() if sampler is not None else None
        for state, members in self._batches(nodes):
            self._grow(state, members, nodes, out, warpers, boundary, limit, first, stop_after, pause)
        self.compute.nodes_expanded += len({id(node) for node in nodes})
        return out  # type: ignore[return-value]

    def rebuild(self, paths: Sequence[tuple], parent: Node | None = None) -> list[Node]:
        """Open nodes for given completions (``(tokens, logprob[, token_logprobs])``, all of one length),
        prefilled together in one forward: a search that returns to a prefix it released
        (OPERA's retrospection) encodes it again instead of keeping every row alive."""
        lengths = {len(path[0]) for path in paths}
        if len(lengths) != 1 or not paths:
            raise InputError("paths: one or more completions, all of one length")
        length = lengths.pop()
        if length >= self.max_new_tokens:
            raise InputError(f"paths: {length} tokens leave no room under max_new_tokens={self.max_new_tokens}")
        with self._model("prefill"):
            state = self.model.start([self.prompt + list(path[0]) for path in paths], self.max_new_tokens - length, **self._record())
        self.compute.forwards += 1
        self.compute.prefill_tokens += len(paths) * (len(self.prompt) + length)
        self._check(state.logits, length)
        parent = parent or self.root
        return [
            Node(tuple(path[0]), float(path[1]), parent, self.decode(list(path[0])), None, parent.depth + 1, _state=state, _row=row, token_logprobs=tuple(path[2]) if len(path) > 2 else ())
            for row, path in enumerate(paths)
        ]

    def children(self, node: Node, tokens: Sequence[int]) -> list[Node]:
        """One child of an open node per token, all advanced by one forward, finished ones
        too (EOS, a stop string, the length limit), so that what their forward recorded can be
        read (contrastive search scores every candidate's hidden state). The children share
        one state; a finished child is not open but keeps its row until released."""
        if not node.open:
            raise InputError(f"node finished ({node.finish}) or released: it cannot be extended")
        ids = [int(t) for t in tokens]
        logprobs = self.logprobs(node)[ids].tolist()
        with self._model("a search step"):
            state = self.model.fork(node._state, torch.full((len(ids),), node._row, dtype=torch.long))
            self.model.advance(state, None, torch.tensor(ids, dtype=torch.long))
        self.compute.forwards += 1
        self.compute.row_forwards += len(ids)
        self.compute.tokens_generated += len(ids)
        self.compute.nodes_expanded += 1
        self._check(state.logits, len(node.tokens) + 1)
        out = []
        for row, (token, logprob) in enumerate(zip(ids, logprobs)):
            sequence = [*node.tokens, token]
            reason = self._end(sequence, len(node.tokens), 1, None, math.inf)
            steps = [*node.token_logprobs, logprob]
            child = self._node(sequence, node.logprob + logprob, node, reason, steps) if reason else Node(tuple(sequence), node.logprob + logprob, node, "", None, node.depth + 1, token_logprobs=tuple(steps))
            child._state, child._row = state, row
            out.append(child)
        return out

    def hidden_of(self, node: Node) -> torch.Tensor:
        """``(layers + 1, dim)`` hidden states of the node's newest token (a tree built with
        ``attention="hidden"``; the node must hold its row: open, or a finished child of
        :meth:`children` not yet released)."""
        return node._state.extra["hidden"][node._row]

    def prompt_hidden(self) -> torch.Tensor:
        """``(positions, dim)`` last hidden states of the prompt (decoder-only) or of the
        decoder start (encoder-decoder), from the prefill of a tree built with
        ``attention="hidden"``."""
        return self._prompt_hidden

    def attention_of(self, node: Node) -> torch.Tensor:
        """``(layers, heads, keys)`` attention of an open node's newest token (a tree built
        with ``attention``); keys are the prompt's and the completion's positions in order."""
        return node._state.extra["attention"][node._row]

    def _record(self) -> dict:
        return {"attention": self.attention} if self.attention is not None else {}

    def logprobs(self, node: Node) -> torch.Tensor:
        """``(vocab,)`` next-token log-probabilities of an open node."""
        return node._state.logits[node._row].log_softmax(-1)

    def top_tokens(self, node: Node, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely next tokens of an open node, with their log-probabilities;
        impossible tokens (probability 0) are never among them."""
        logprobs = node._state.logits[node._row].log_softmax(-1)
        values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
        return [(i, value) for i, value in zip(ids.tolist(), values.tolist()) if value > -math.inf]

    def release(self, node: Node) -> None:
        """Forget the node's cache row (it will not be extended again)."""
        node._state = None

    def finish(self, best: Node | None) -> Compute:
        """Close the accounting: ``best``'s tokens are the kept ones; stamps the wall time."""
        self.compute.tokens_kept = len(best.tokens) if best is not None else 0
        self.compute.wall_seconds = time.perf_counter() - self._began
        return self.compute

    # -- internals --------------------------------------------------------------------------

    def _batches(self, nodes: Sequence[Node]):
        """``(state, members)`` pairs: a fresh state whose row ``i`` forks ``nodes[members[i]]``'s
        row. Nodes of different states share one state when the model can merge them."""
        groups: dict[int, tuple[object, list[int]]] = {}
        for index, node in enumerate(nodes):
            groups.setdefault(id(node._state), (node._state, []))[1].append(index)
        forks = []
        with self._model("forking branches"):
            for state, members in groups.values():
                rows = torch.tensor([nodes[i]._row for i in members], dtype=torch.long)
                forks.append((self.model.fork(state, rows), members))
            if len(forks) > 1 and getattr(self.model, "can_merge", False) and self.attention is None:
                state, members = forks[0]
                for other, more in forks[1:]:
                    state = self.model.merge(state, other)
                    members = members + more
                forks = [(state, members)]
        return forks

    @contextlib.contextmanager
    def _model(self, where: str):
        """Hold the lock for one model call; the model's own failures become a named
        :class:`~decodekit.errors.ModelError`."""
        with self.lock():
            try:
                yield
            except DecodeKitError:
                raise
            except Exception as error:
                raise model_error(self.model, where, error) from error

    def _check(self, logits: torch.Tensor, step: int) -> None:
        finite = torch.isfinite(logits.amax(-1))  # NaN, +inf, or no possible token
        if not bool(finite.all()):
            raise NumericalError(step, int((~finite).nonzero()[0, 0]))

    def _choose(self, logits: torch.Tensor, warpers) -> torch.Tensor:
        if warpers is None:
            return logits.argmax(-1)
        warped = warpers(None, logits) if len(warpers) else logits
        u = torch.rand(logits.shape[0], generator=self.generator)
        return race(warped, u)

    def _end(self, tokens: list[int], start: int, drawn: int, boundary, limit) -> str | None:
        """Why a branch ends after its newest token (None: it goes on). ``start``: its token
        count when this extension began. Only the text a check needs is decoded: the last
        ``window`` tokens for stop strings, this extension's tokens for the boundary."""
        if tokens[-1] in self.eos:
            return "eos"
        if self.stop and any(s in self.decode(tokens[-self.window :]) for s in self.stop):
            return "stop"
        if len(tokens) >= self.max_new_tokens:
            return "length"
        if boundary is not None and boundary in self.decode(tokens[start:]):
            return "step"
        if drawn >= limit:
            return "budget"
        return None

    def _node(self, tokens: list[int], logprob: float, parent: Node, reason: str, steps: list[float]) -> Node:
        text = self.decode(tokens)
        if reason == "stop":
            text = text[: min(at for s in self.stop if (at := text.find(s)) >= 0)]
        return Node(tuple(tokens), logprob, parent, text, reason, parent.depth + 1, token_logprobs=tuple(steps))

    def _grow(self, state, members, parents, out, warpers, boundary, limit, first, stop_after, pause=None) -> None:
        """Extend the rows of ``state`` (row ``i`` is branch ``members[i]``) until every branch
        ended; fill ``out``. Steps: 1. draw a token per live row; 2. classify each branch;
        3. drop finished rows, one forward for the rest; 4. branches that ended a step fork
        their rows into a state of their own. The lock is held per model call, so engine steps
        run between this extension's steps."""
        model, compute = self.model, self.compute
        tokens = {i: list(parents[i].tokens) for i in members}
        logprob = {i: parents[i].logprob for i in members}
        steps = {i: list(parents[i].token_logprobs) for i in members}
        starts = {i: len(parents[i].tokens) for i in members}
        live, drawn, ended = list(members), 0, 0
        while live:
            logits = state.logits
            self._check(logits, drawn)
            if drawn == 0 and first is not None:
                chosen = torch.tensor([int(first[i]) for i in live], dtype=torch.long)
            else:
                chosen = self._choose(logits, warpers)
            scores = logits.log_softmax(-1).gather(1, chosen[:, None]).squeeze(1)
            drawn += 1
            compute.tokens_generated += len(live)
            ids, lps = chosen.tolist(), scores.tolist()
            reasons: dict[int, str] = {}
            for j, i in enumerate(live):
                tokens[i].append(ids[j])
                logprob[i] += lps[j]
                steps[i].append(lps[j])
                reason = self._end(tokens[i], starts[i], drawn, boundary, limit)
                if reason is not None:
                    reasons[j] = reason
                    out[i] = self._node(tokens[i], logprob[i], parents[i], reason, steps[i])
                    ended += reason in TERMINAL
            if stop_after is not None and ended >= stop_after:
                for j, i in enumerate(live):
                    if reasons.get(j) not in TERMINAL:
                        out[i] = self._node(tokens[i], logprob[i], parents[i], "cut", steps[i])
                return
            keep = [j for j in range(len(live)) if reasons.get(j) not in TERMINAL]
            if not keep:
                return
            opened = [k for k, j in enumerate(keep) if j in reasons]  # "step" / "budget"
            with self._model("a search step"):
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long)
                    model.select(state, index)
                    chosen = chosen.index_select(0, index)
                model.advance(state, None, chosen)
            if pause is not None:  # branches whose next distribution calls for a pause
                flagged = pause(state.logits).tolist()
                for k, j in enumerate(keep):
                    if flagged[k] and j not in reasons:
                        i = live[j]
                        out[i] = self._node(tokens[i], logprob[i], parents[i], "pause", steps[i])
                        opened.append(k)
                opened.sort()
            still = [k for k in range(len(keep)) if k not in set(opened)]
            with self._model("forking branches"):
                branch = state
                if opened and still:
                    branch = model.fork(state, torch.tensor(opened, dtype=torch.long))
                    model.select(state, torch.tensor(still, dtype=torch.long))
            compute.forwards += 1
            compute.row_forwards += len(keep)
            live = [live[j] for j in keep]
            if opened:
                self._check(branch.logits, drawn)
                for row, k in enumerate(opened):
                    out[live[k]]._state, out[live[k]]._row = branch, row
                live = [live[k] for k in still]
