"""The speculative decoding loop: propose, verify in one target forward, keep what was accepted.

Per step, for all live rows at once:

1. the proposer drafts a tree (or chain) per row from the row's tokens so far;
2. the target scores ``[last token, draft...]`` in one forward (:meth:`verify`: a 4D mask,
   depth positions, per-row positions so rows may differ in length);
3. the verifier picks each row's accepted path and its recovered or bonus token;
4. the target cache keeps the last token and the accepted path (:meth:`keep`); rows that
   kept fewer leave masked holes, squeezed out now and then (:meth:`compact`), so a row's
   output never depends on the other rows of the batch;
5. rows that reached EOS, ``max_new_tokens`` or a stop string leave the batch.

One host sync per step (the accepted tokens, which the proposers need as Python lists).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.errors import NumericalError
from decodekit.model.base import tree_ancestors
from decodekit.search.base import Hypothesis, inverse_cdf
from decodekit.speculative.base import Proposer, SpeculationContext, Verification, Warp
from decodekit.speculative.verify import accept_greedy, accept_sampling


@dataclass(frozen=True)
class SpeculationStats:
    """Acceptance statistics of one prompt (summed over its rows when ``n > 1``).

    ``target_forwards``: verification forwards the prompt's rows took part in (the prefill is
    not counted). ``drafted``: draft tokens proposed; ``accepted``: draft tokens accepted;
    ``generated``: tokens emitted (accepted + recovered/bonus, + the first token, which comes
    from the prefill)."""

    proposer: str
    target_forwards: int
    drafted: int
    accepted: int
    generated: int

    @property
    def accepted_per_forward(self) -> float:
        return self.accepted / max(1, self.target_forwards)

    @property
    def forwards_per_token(self) -> float:
        return self.target_forwards / max(1, self.generated)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.drafted)


class SpeculativeDecoding:
    """One speculative decoding call over ``rows`` independent rows (``prompts`` repeated
    ``width`` times for ``n`` samples). ``warp`` None means greedy."""

    def __init__(
        self,
        model,
        prompts,
        proposer: Proposer,
        *,
        width: int,
        max_new_tokens: int,
        eos: tuple[int, ...],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
        stop_check=None,
        max_draft: int = 64,
        processors=None,
        constraint=None,
        siblings: int = 1,
    ):
        self.model, self.prompts, self.proposer = model, prompts, proposer
        # logits processors (stateless: penalties, bans, minimum length), applied to every
        # block position with that position's own history, as plain decoding applies them
        self.processors = processors if processors is not None and len(processors) else None
        self.prompt_pad = max(len(p) for p in prompts)
        # a constraint (ConstraintProcessor) followed through chain drafts
        self.constraint = None
        if constraint is not None:
            from decodekit.speculative.constrained import ChainConstraint

            self.constraint = ChainConstraint(constraint, len(prompts) * width, max_new_tokens)
        self.width, self.max_new = width, max_new_tokens
        self.eos, self.warp = set(eos), warp
        self.generators = tuple(generators) or (None,) * len(prompts)
        self.stop_check, self.max_draft = stop_check, max_draft
        # children of one stochastic draft node the verifier tries (recursive rejection
        # sampling of a draft model's tree): each needs its own number per output position
        self.siblings = siblings

    def _padded(self, tokens: list[int], prompt: list[int]) -> list[int]:
        """A history as plain decoding's processors see it: the prompt left-padded with -1 to
        the group's prompt length, then the generated tokens."""
        return [-1] * (self.prompt_pad - len(prompt)) + tokens

    def _process_first(self, logits: torch.Tensor) -> torch.Tensor:
        if self.processors is None:
            return logits
        rows = logits.shape[0]
        history = [self._padded(self.prompts[r // self.width], self.prompts[r // self.width]) for r in range(rows)]
        ids = torch.tensor(history, dtype=torch.long, device=logits.device)
        return self.processors(ids, logits.clone())

    def _process_block(self, logits, live, sequences, row_prompts, inputs, parents, valid) -> torch.Tensor:
        """``(rows, n, V)`` block logits -> processed, each valid node with the history of its
        path (row tokens, then the draft tokens from the root to the node). Nodes are grouped by
        history length, one processor call per length."""
        if self.processors is None:
            return logits
        rows, n, _ = logits.shape
        ancestors = tree_ancestors(parents).tolist()
        tokens, valid = inputs.tolist(), valid.tolist()
        by_length: dict[int, list[tuple[int, int, list[int]]]] = {}
        for i, r in enumerate(live):
            base = self._padded(sequences[r], row_prompts[r])
            for j in range(n):
                if not valid[i][j]:
                    continue
                # parents precede children, so block order along a path is depth order
                path = [tokens[i][k] for k in range(1, j + 1) if ancestors[i][j][k]]
                history = base + path
                by_length.setdefault(len(history), []).append((i, j, history))
        out = logits.clone()
        for items in by_length.values():
            index_i = torch.tensor([i for i, _, _ in items], device=logits.device)
            index_j = torch.tensor([j for _, j, _ in items], device=logits.device)
            ids = torch.tensor([h for _, _, h in items], dtype=torch.long, device=logits.device)
            out[index_i, index_j] = self.processors(ids, logits[index_i, index_j])
        return out

    def _first_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        if self.warp is None:
            return logits.argmax(-1)
        return inverse_cdf(self.warp(logits).softmax(-1), self.uniforms[:, 0, 0])

    def _block_uniforms(self, live: list[int], n: int) -> torch.Tensor:
        """``(live, n, 1 + siblings)``: the numbers of each live row's next ``n`` output
        positions."""
        device = self.uniforms.device
        start = torch.tensor([len(self.out[r]) for r in live], device=device)
        positions = (start[:, None] + torch.arange(n, device=device)).clamp(max=self.max_new)
        rows = torch.tensor(live, device=device)[:, None]
        return self.uniforms[rows, positions]

    def run(self) -> tuple[list[list[Hypothesis]], list[SpeculationStats]]:
        """Decode to the end; each prompt's hypotheses and statistics."""
        for _ in self.steps():
            pass
        return self._hypotheses(), self._stats()

    def steps(self):
        """Decode step by step: yields after the prefill and after every verification step
        (the engine interleaves these steps with its other requests). ``self.out[r]`` holds
        row ``r``'s tokens so far; ``self.reason[r]`` is set once the row has finished."""
        model, width = self.model, self.width
        state = model.start(self.prompts, self.max_new + self.max_draft + 2)
        device = state.logits.device
        rows = len(self.prompts) * width
        if self.warp is not None:
            # two U[0, 1) numbers per row and output position (see verify.accept_sampling),
            # each prompt's from its own generator
            shape = (width, self.max_new + 1, 2)
            self.uniforms = torch.cat(
                [torch.rand(shape, generator=g, device=device) for g in self.generators]
            )
            if self.siblings > 1:  # after the first two, so those stay what they always were
                shape = (width, self.max_new + 1, self.siblings - 1)
                more = [torch.rand(shape, generator=g, device=device) for g in self.generators]
                self.uniforms = torch.cat([self.uniforms, torch.cat(more)], -1)
        if width > 1:
            model.select(
                state, torch.arange(len(self.prompts), device=device).repeat_interleave(width)
            )
        bad = ~torch.isfinite(torch.logsumexp(state.logits, -1))  # NaN, +inf or all -inf
        if bool(bad.any()):
            raise NumericalError(step=0, row=int(bad.nonzero()[0]))
        first_logits = self._process_first(state.logits)
        if self.constraint is not None:
            first_logits = self.constraint.first(first_logits)
        first = self._first_tokens(first_logits)
        first_logprob = first_logits.log_softmax(-1).gather(1, first[:, None]).squeeze(1)
        row_prompts = [list(self.prompts[r // width]) for r in range(rows)]
        self.out = [[t] for t in first.tolist()]
        if self.constraint is not None:
            self.constraint.consume(list(range(rows)), [o[0] for o in self.out])
        self.logprobs = [[v] for v in first_logprob.tolist()]
        self.reason = [None] * rows
        self.forwards, self.drafted, self.accepted = [0] * rows, [0] * rows, [0] * rows
        sequences = [p + o for p, o in zip(row_prompts, self.out)]
        for r in range(rows):
            self._check_finished(r, 1)
        self.proposer.begin(row_prompts, self.warp, tuple(g for g in self.generators for _ in range(width)))
        live = [r for r in range(rows) if self.reason[r] is None]
        yield
        if len(live) < rows:
            model.select(state, torch.tensor(live, dtype=torch.long, device=device))
        while live:
            limits = [min(self.max_draft, self.max_new - len(self.out[r]) - 1) for r in live]
            context = SpeculationContext(live, [sequences[r] for r in live], limits)
            draft = self.proposer.propose(context)
            # Block: the last token (root), then the draft; padding and depth cuts are invalid.
            count = len(live)
            last = torch.tensor([sequences[r][-1] for r in live], dtype=torch.long, device=device)
            inputs = torch.cat([last[:, None], draft.tokens.to(device)], 1)
            parents = torch.cat(
                [torch.full((count, 1), -1, device=device), draft.parents.to(device) + 1], 1
            )
            valid = torch.cat(
                [torch.ones((count, 1), dtype=torch.bool, device=device), draft.valid.to(device)], 1
            )
            parents = torch.where(valid, parents, 0)  # padding hangs off the root, never accepted
            raw = model.verify(state, inputs, parents)
            # NaN, +inf or all -inf logits at a node that could be emitted: the maximum is
            # NaN, +inf or -inf exactly then (as the engine's log-normaliser, without the exp)
            nonfinite = (~torch.isfinite(raw.amax(-1)) & valid).any(-1)
            logits = self._process_block(raw, live, sequences, row_prompts, inputs, parents, valid)
            if self.constraint is not None:
                produced = [len(self.out[r]) for r in live]
                logits, valid = self.constraint.block(logits, live, produced, inputs, valid)
            if self.warp is None:
                acceptance = accept_greedy(logits, inputs, parents, valid)
            else:
                probs = draft.probs.to(device) if draft.probs is not None else None
                uniforms = self._block_uniforms(live, inputs.shape[1])
                acceptance = accept_sampling(
                    logits, inputs, parents, valid, self.warp, uniforms, probs
                )
            model.keep(state, acceptance.path, acceptance.kept)
            kept, bad = torch.stack([acceptance.kept, nonfinite.long()]).tolist()  # the one host sync
            if any(bad):
                i = bad.index(1)
                raise NumericalError(step=len(self.out[live[i]]), row=live[i])
            tokens, logprobs = acceptance.tokens.tolist(), acceptance.logprobs.tolist()
            if self.constraint is not None:
                self.constraint.keep(live, [k - 1 for k in kept], [tokens[i][kept[i] - 1] for i in range(len(live))])
            drafted = draft.valid.sum(-1).tolist()
            emitted: list[list[int]] = []
            for i, r in enumerate(live):
                new, new_logprobs = tokens[i][: kept[i]], logprobs[i][: kept[i]]
                room = self.max_new - len(self.out[r])
                new, new_logprobs = new[:room], new_logprobs[:room]
                for j, token in enumerate(new):  # cut at the first EOS
                    if token in self.eos:
                        new, new_logprobs = new[: j + 1], new_logprobs[: j + 1]
                        break
                before = len(self.out[r])
                self.out[r].extend(new)
                self.logprobs[r].extend(new_logprobs)
                sequences[r].extend(new)
                self.forwards[r] += 1
                self.drafted[r] += drafted[i]
                self.accepted[r] += kept[i] - 1
                self._check_finished(r, before + 1)
                emitted.append(new)
            self.proposer.observe(
                Verification(live, inputs, parents, valid, logits, [k - 1 for k in kept], emitted)
            )
            still = [i for i, r in enumerate(live) if self.reason[r] is None]
            if len(still) < len(live):
                if still:
                    model.select(state, torch.tensor(still, dtype=torch.long, device=device))
                live = [live[i] for i in still]
            elif live and state.extra.get("length", 0) > 2 * (
                max(len(sequences[r]) for r in live) + 32
            ):
                model.compact(state)
            yield
        self.proposer.finish(self.out)

    def _check_finished(self, r: int, first_new: int) -> None:
        """Set row ``r``'s finish reason from its tokens ``out[r][first_new - 1:]``."""
        out = self.out[r]
        if out[-1] in self.eos:
            self.reason[r] = "eos"
            return
        if self.stop_check is not None:
            for end in range(first_new, len(out) + 1):
                if bool(self.stop_check(torch.tensor([out[:end]], dtype=torch.long))[0]):
                    del out[end:]
                    del self.logprobs[r][end:]
                    self.reason[r] = "stop"
                    return
        if len(out) >= self.max_new:
            self.reason[r] = "length"

    def _hypotheses(self) -> list[list[Hypothesis]]:
        groups = []
        for prompt in range(len(self.prompts)):
            group = []
            for r in range(prompt * self.width, (prompt + 1) * self.width):
                total = float(sum(self.logprobs[r]))
                group.append(
                    Hypothesis(
                        self.out[r], self.logprobs[r], total, total, self.reason[r] or "length"
                    )
                )
            groups.append(group)
        return groups

    def _stats(self) -> list[SpeculationStats]:
        stats = []
        for prompt in range(len(self.prompts)):
            rows = range(prompt * self.width, (prompt + 1) * self.width)
            stats.append(
                SpeculationStats(
                    self.proposer.name,
                    sum(self.forwards[r] for r in rows),
                    sum(self.drafted[r] for r in rows),
                    sum(self.accepted[r] for r in rows),
                    sum(len(self.out[r]) for r in rows),
                )
            )
        return stats
