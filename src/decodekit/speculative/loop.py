"""The speculative decoding loop: propose, verify in one target forward, keep what was accepted.

Per step, for all live rows at once:

1. the proposer drafts a tree (or chain) per row from the row's tokens so far;
2. the target scores ``[last token, draft...]`` in one forward (:meth:`verify`: a 4D mask,
   depth positions, per-row positions so rows may differ in length);
3. the verifier picks each row's accepted path and its recovered or bonus token;
4. the target cache keeps the last token and the accepted path (:meth:`keep`); rows that
   kept fewer leave masked holes, squeezed out now and then (:meth:`compact`), so a row's
   output never depends on the other rows of the batch;
5. rows that reached EOS, their ``max_new_tokens`` or a stop string leave the batch.

One host sync per step (the accepted tokens, which the proposers need as Python lists).

Rows have ids that never repeat within a run. A run is *joinable* when nothing in it depends
on the batch's composition (a proposer that takes rows in and out, a model whose states
merge): then later requests' rows :meth:`~SpeculativeDecoding.admit` into the running state
between steps (continuous batching), each with its own length limit, stop check, generator,
processors and constraint (:class:`~decodekit.speculative.constrained.RoutedConstraints`), and
a row's tokens are the same as alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from decodekit.errors import NumericalError
from decodekit.search.base import Hypothesis, race
from decodekit.speculative.base import Draft, Proposer, SpeculationContext, Verification, Warp
from decodekit.speculative.budget import BlockWidth
from decodekit.speculative.processing import ProcessedBlocks
from decodekit.speculative.results import RowResults
from decodekit.speculative.stats import SpeculationStats
from decodekit.speculative.verify import accept_rows


@dataclass
class Block:
    """A step's block (:meth:`SpeculativeDecoding.prepare`): the rows, their draft, and the
    target's input: ``(rows, n)`` tokens (the last token, then the draft), parents, validity."""

    live: list[int]
    draft: Draft
    inputs: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor


class SpeculativeDecoding(ProcessedBlocks, RowResults):
    """One speculative decoding run: ``prompts`` repeated ``width`` times (``n`` samples),
    then any rows admitted later (:attr:`joinable` runs). ``warp`` None means greedy."""

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
        # an encoder-decoder target: its decoder history starts at the start token, its drafts
        # are chains, and every row keeps as many tokens per step (shared positions, no holes)
        self.encoder_decoder = bool(model.is_encoder_decoder)
        self.start_token = int(model.decoder_start_token_id) if self.encoder_decoder else None
        # logits processors (stateless: penalties, bans, minimum length), applied to every
        # block position with that position's own history, as plain decoding applies them
        self.processors = processors if processors is not None and len(processors) else None
        self.prompt_pad = 1 if self.encoder_decoder else max(len(p) for p in prompts)
        # constraints (ConstraintProcessor) followed through chain drafts: the first prompts'
        # and any joining request's own, each over its rows
        self.constraint = None
        self._first_constraint = constraint
        self.width, self.max_new = width, max_new_tokens
        self.eos, self.warp = set(eos), warp
        self.warps: dict[int, Warp | None] = {}  # row -> its sampler (None: greedy); the run's or its request's
        self.generators = tuple(generators) or (None,) * len(prompts)
        self.stop_check, self.max_draft = stop_check, max_draft
        # children of one stochastic draft node the verifier tries (recursive rejection
        # sampling of a draft model's tree): each needs its own number per output position
        self.siblings = siblings
        # per row id: tokens and log-probs so far, finish reason, counters, limits
        self.out: dict[int, list[int]] = {}
        self.logprobs: dict[int, list[float]] = {}
        self.reason: dict[int, str | None] = {}
        self.failed: dict[int, int] = {}  # row -> output position of its non-finite logits
        self.forwards: dict[int, int] = {}
        self.drafted: dict[int, int] = {}
        self.accepted: dict[int, int] = {}
        self.sequences: dict[int, list[int]] = {}  # prompt + output
        self.row_prompts: dict[int, list[int]] = {}
        self.limit: dict[int, int] = {}
        self.stops: dict[int, object] = {}
        self.processing: dict[int, tuple] = {}  # row -> (its group's processors or None, prompt length)
        self.state = None
        self.live: list[int] = []  # row ids, in the state's row order
        self.uniforms: torch.Tensor | None = None  # the live rows' numbers, in live order
        self._next = 0
        self._begun = self._ended = False
        self.model_seconds = 0.0  # time inside the target's forwards (prefills, verifications)
        self.block_width = BlockWidth()  # how much of a batch's drafts one forward verifies

    @property
    def joinable(self) -> bool:
        """Whether rows may :meth:`admit` into this run while it decodes."""
        return (
            bool(getattr(self.proposer, "joins", False))
            and bool(getattr(self.model, "can_merge", False))
        )

    def _block_uniforms(self, n: int) -> torch.Tensor:
        """``(live, n, 1 + siblings)``: the numbers of each live row's next ``n`` output
        positions."""
        device = self.uniforms.device
        start = torch.tensor([len(self.out[r]) for r in self.live], device=device)
        positions = (start[:, None] + torch.arange(n, device=device)).clamp(max=self.uniforms.shape[1] - 1)
        rows = torch.arange(len(self.live), device=device)[:, None]
        return self.uniforms[rows, positions]

    def _numbers(self, width: int, max_new: int, generators, device) -> torch.Tensor:
        """Two U[0, 1) numbers per row and output position (see verify.accept_sampling), each
        prompt's from its own generator, then one per extra sibling tried."""
        shape = (width, max_new + 1, 2)
        numbers = torch.cat([torch.rand(shape, generator=g, device=device) for g in generators])
        if self.siblings > 1:  # after the first two, so those stay what they always were
            shape = (width, max_new + 1, self.siblings - 1)
            more = [torch.rand(shape, generator=g, device=device) for g in generators]
            numbers = torch.cat([numbers, torch.cat(more)], -1)
        return numbers

    # -- admission ------------------------------------------------------------------------------

    def admit(self, prompts, width: int, max_new_tokens: int, generators=(), stop_check=None, processors=None, warp=..., constraint=None) -> list[int]:
        """Prefill ``prompts`` (each ``width`` rows), choose their first tokens and let the rows
        that go on join the running state. ``processors``: theirs, built for a prompt length of
        the longest of ``prompts`` (the run's own for its first prompts). ``warp``: their
        sampler (None: greedy; default: the run's), which may differ from the other rows' where
        the proposer's drafts are deterministic. ``constraint``: theirs (the run's own for its
        first prompts; a chain-draft proposer). Returns the new row ids, prompt-major. Raises
        :class:`NumericalError` (changing nothing) if a prompt's logits are not finite."""
        if self._begun and not self.joinable:
            raise RuntimeError("this speculative run takes no more rows")
        model = self.model
        generators = tuple(generators) or (None,) * len(prompts)
        began = time.perf_counter()
        state = model.start(prompts, max_new_tokens + self.max_draft + 2)
        self.model_seconds += time.perf_counter() - began
        device = state.logits.device
        count = len(prompts) * width
        warp = self.warp if warp is ... else warp
        # numbers for every row once any row samples (a greedy row never reads its own)
        numbers = self._numbers(width, max_new_tokens, generators, device) if warp is not None or self.uniforms is not None else None
        if width > 1:
            model.select(state, torch.arange(len(prompts), device=device).repeat_interleave(width))
        bad = ~torch.isfinite(torch.logsumexp(state.logits, -1))  # NaN, +inf or all -inf
        if bool(bad.any()):
            raise NumericalError(step=0, row=int(bad.nonzero()[0]))
        if not self._begun:
            processing = (self.processors, self.prompt_pad)
        else:
            processing = (processors if processors is not None and len(processors) else None, max(len(p) for p in prompts))
        logits = self._process_first(state.logits, prompts, width, processing)
        rows = list(range(self._next, self._next + count))
        constraint = self._first_constraint if not self._begun else constraint
        if constraint is not None:
            if self.constraint is None:
                from decodekit.speculative.constrained import RoutedConstraints

                self.constraint = RoutedConstraints()
            self.constraint.add(constraint, rows, max_new_tokens)
            logits = self.constraint.first(logits, rows)
        first = logits.argmax(-1) if warp is None else race(warp(logits), numbers[:, 0, 0])
        first_logprob = logits.log_softmax(-1).gather(1, first[:, None]).squeeze(1)
        self._next += count
        for i, (r, token, logprob) in enumerate(zip(rows, first.tolist(), first_logprob.tolist())):
            prompt = list(prompts[i // width])
            self.row_prompts[r], self.out[r], self.logprobs[r] = prompt, [token], [logprob]
            self.sequences[r] = prompt + [token]
            self.reason[r], self.limit[r], self.stops[r] = None, max_new_tokens, stop_check
            self.processing[r], self.warps[r] = processing, warp
            self.forwards[r] = self.drafted[r] = self.accepted[r] = 0
        if self.constraint is not None:
            self.constraint.consume(rows, [self.out[r][0] for r in rows])
        for r in rows:
            self._check_finished(r, 1)
        row_generators = tuple(g for g in generators for _ in range(width))
        if self._begun:
            self.proposer.join(rows, [self.row_prompts[r] for r in rows], row_generators)
        else:
            self.proposer.begin([self.row_prompts[r] for r in rows], self.warp, row_generators)
            self._begun = True
        going = [i for i, r in enumerate(rows) if self.reason[r] is None]
        self._left([r for r in rows if self.reason[r] is not None])
        if going:
            if len(going) < count:
                index = torch.tensor(going, dtype=torch.long, device=device)
                model.select(state, index)
                numbers = numbers.index_select(0, index) if numbers is not None else None
            self.state = state if self.state is None else model.merge(self.state, state)
            if numbers is not None:
                if self.uniforms is None and self.live:  # the first sampled rows of a greedy run
                    self.uniforms = numbers.new_zeros(len(self.live), *numbers.shape[1:])
                self.uniforms = numbers if self.uniforms is None else _stack_padded(self.uniforms, numbers)
            self.live += [rows[i] for i in going]
        return rows

    def drop(self, rows: list[int]) -> None:
        """Rows whose request was aborted leave the batch now (their outputs are kept)."""
        gone = set(rows) & set(self.live)
        for r in gone:
            self.reason[r] = "aborted"
        if gone:
            self._keep_live([i for i, r in enumerate(self.live) if r not in gone])
            self._left(sorted(gone))

    def forget(self, rows: list[int]) -> None:
        """Delivered rows: drop everything the run kept about them."""
        if self.constraint is not None:
            self.constraint.forget(rows)
        for r in rows:
            for table in (self.out, self.logprobs, self.reason, self.failed, self.forwards, self.drafted,
                          self.accepted, self.sequences, self.row_prompts, self.limit, self.stops, self.processing, self.warps):
                table.pop(r, None)

    def _keep_live(self, still: list[int]) -> None:
        """Keep the live rows at positions ``still`` (in the state and the numbers)."""
        if len(still) == len(self.live):
            return
        live = [self.live[i] for i in still]
        if live:
            index = torch.tensor(still, dtype=torch.long, device=self.state.logits.device)
            self.model.select(self.state, index)
            if self.uniforms is not None:
                self.uniforms = self.uniforms.index_select(0, index)
        else:
            self.state, self.uniforms = None, None
        self.live = live

    def _left(self, rows: list[int]) -> None:
        """Tell a proposer that takes rows out which rows have finished."""
        if rows and hasattr(self.proposer, "leave"):
            self.proposer.leave(rows, [self.out[r] for r in rows])

    def end(self) -> None:
        """End the run: the proposer's ``finish`` with every row's output still kept."""
        if self._begun and not self._ended:
            self._ended = True
            self.proposer.finish([self.out.get(r, []) for r in range(self._next)])

    # -- decoding -------------------------------------------------------------------------------

    def run(self) -> tuple[list[list[Hypothesis]], list[SpeculationStats]]:
        """Decode to the end; each prompt's hypotheses and statistics."""
        for _ in self.steps():
            if self.failed:
                row, step = next(iter(self.failed.items()))
                raise NumericalError(step=step, row=row)
        return self._hypotheses(), self._stats()

    def steps(self):
        """Decode step by step: yields after the prefill and after every verification step
        (the engine interleaves these steps with its other requests). ``self.out[r]`` holds
        row ``r``'s tokens so far; ``self.reason[r]`` is set once the row has finished."""
        self.admit(self.prompts, self.width, self.max_new, self.generators, self.stop_check)
        yield
        while self.live:
            self.step()
            yield
        self.end()

    def step(self) -> list[int]:
        """One draft-and-verify step of every live row; returns the rows that finished."""
        block = self.prepare()
        began = time.perf_counter()
        raw = self.model.verify(self.state, block.inputs, block.parents)
        return self.complete(block, raw, time.perf_counter() - began)

    @property
    def fusable(self) -> bool:
        """Whether this run's verification forward can be one part of another forward (the
        engine's step of its plain rows: :meth:`~decodekit.model.hf.HFLanguageModel.advance_fused`)."""
        return bool(self.live) and not self.encoder_decoder and getattr(self.model, "can_fuse_prefill", False) and "mask" in self.state.extra

    def prepare(self) -> Block:
        """The first half of :meth:`step`: every live row's draft and the block to verify."""
        state, live = self.state, self.live
        device = state.logits.device
        limits = [min(self.max_draft, self.limit[r] - len(self.out[r]) - 1) for r in live]
        context = SpeculationContext(live, [self.sequences[r] for r in live], limits, [self.warps[r] for r in live])
        draft = self.proposer.propose(context)
        count = len(live)
        # Subtle: only deterministic drafts are cut; a stochastic draft's tokens take part in
        # the draws, so cutting one row's because of the others would make its sample depend
        # on the batch (a deterministic draft never changes what a row emits)
        if count > 1 and draft.size and draft.probs is None:
            width = self.block_width.width(draft.valid.sum(-1).tolist())
            if width < draft.size:  # nodes come after their parents: a cut keeps whole paths
                draft = Draft(draft.tokens[:, :width], draft.parents[:, :width], draft.valid[:, :width])
        # Block: the last token (root), then the draft; padding and depth cuts are invalid.
        last = torch.tensor([self.sequences[r][-1] for r in live], dtype=torch.long, device=device)
        inputs = torch.cat([last[:, None], draft.tokens.to(device)], 1)
        parents = torch.cat([torch.full((count, 1), -1, device=device), draft.parents.to(device) + 1], 1)
        valid = torch.cat([torch.ones((count, 1), dtype=torch.bool, device=device), draft.valid.to(device)], 1)
        parents = torch.where(valid, parents, 0)  # padding hangs off the root, never accepted
        return Block(list(live), draft, inputs, parents, valid)

    def complete(self, block: Block, raw: torch.Tensor, seconds: float) -> list[int]:
        """The second half of :meth:`step`, given the target's ``(rows, n, vocab)`` logits of
        ``block`` (:meth:`~decodekit.model.blocks.BlockSteps.verify`) and the seconds they took."""
        model, state, live = self.model, self.state, block.live
        device = state.logits.device
        draft, inputs, parents, valid = block.draft, block.inputs, block.parents, block.valid
        count = len(live)
        self.model_seconds += seconds
        # NaN, +inf or all -inf logits at a node that could be emitted: the maximum is
        # NaN, +inf or -inf exactly then (as the engine's log-normaliser, without the exp)
        nonfinite = (~torch.isfinite(raw.amax(-1)) & valid).any(-1)
        logits = self._process_block(raw, live, inputs, parents, valid)
        if self.constraint is not None:
            produced = [len(self.out[r]) for r in live]
            logits, valid = self.constraint.block(logits, live, produced, inputs, valid)
        probs = draft.probs.to(device) if draft.probs is not None else None
        uniforms = self._block_uniforms(inputs.shape[1]) if self.uniforms is not None else None
        acceptance = accept_rows(logits, inputs, parents, valid, [self.warps[r] for r in live], uniforms, probs)
        if not self.encoder_decoder:
            model.keep(state, acceptance.path, acceptance.kept)
        kept, bad = torch.stack([acceptance.kept, nonfinite.long()]).tolist()  # the one host sync
        if self.encoder_decoder:
            # every row keeps as many block tokens as the row that kept the fewest: its first
            # ones are still the target's own (an accepted draft token is the target's token
            # at its position), so only speed is lost, and positions stay shared
            least = min(kept)
            kept = [least] * count
            model.keep(state, acceptance.path[:, :least], torch.full((count,), least, device=device))
        tokens, logprobs = acceptance.tokens.tolist(), acceptance.logprobs.tolist()
        if self.constraint is not None:
            self.constraint.keep(live, [k - 1 for k in kept], [tokens[i][kept[i] - 1] for i in range(count)])
        drafted = draft.valid.sum(-1).tolist()
        self.block_width.record(inputs.numel(), seconds, sum(drafted), sum(kept) - count)
        emitted: list[list[int]] = []
        for i, r in enumerate(live):
            if bad[i]:  # this row fails alone; the others go on
                self.failed[r], self.reason[r] = len(self.out[r]), "error"
                emitted.append([])
                continue
            new, new_logprobs = tokens[i][: kept[i]], logprobs[i][: kept[i]]
            room = self.limit[r] - len(self.out[r])
            new, new_logprobs = new[:room], new_logprobs[:room]
            for j, token in enumerate(new):  # cut at the first EOS
                if token in self.eos:
                    new, new_logprobs = new[: j + 1], new_logprobs[: j + 1]
                    break
            before = len(self.out[r])
            self.out[r].extend(new)
            self.logprobs[r].extend(new_logprobs)
            self.sequences[r].extend(new)
            self.forwards[r] += 1
            self.drafted[r] += drafted[i]
            self.accepted[r] += kept[i] - 1
            self._check_finished(r, before + 1)
            emitted.append(new)
        self.proposer.observe(Verification(live, inputs, parents, valid, logits, [k - 1 for k in kept], emitted))
        still = [i for i, r in enumerate(live) if self.reason[r] is None]
        finished = [r for r in live if self.reason[r] is not None]
        if finished:
            self._keep_live(still)
            self._left(finished)
        elif state.extra.get("length", 0) > 2 * (max(len(self.sequences[r]) for r in live) + 32):
            model.compact(state)
        return finished

def _stack_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` then ``b`` along rows, the shorter one's positions padded with zeros (positions past
    a row's own limit are never read for a token it keeps)."""
    positions = max(a.shape[1], b.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == positions:
            return x
        return torch.cat([x, x.new_zeros(x.shape[0], positions - x.shape[1], x.shape[2])], 1)

    return torch.cat([pad(a), pad(b)])
