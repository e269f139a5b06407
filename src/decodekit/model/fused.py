"""One pass of the lean step for several batches: the running rows' one-token step, the
prefill of newly admitted prompts and speculative runs' verification blocks (continuous
batching: one forward per engine step).

Mixed into :class:`~decodekit.model.hf.HFLanguageModel`, whose ``_step_part``,
``_prefill_part``, ``_verify_part`` build the parts and ``_stepped``, ``_prefilled``,
``_verified`` complete them.
"""

from __future__ import annotations

import torch

from decodekit.model.base import DecodeState
from decodekit.model.lean import active_of, spread


class FusedSteps:
    @property
    def can_fuse_prefill(self) -> bool:
        """Whether :meth:`advance_and_start` runs one forward for both (the lean steps)."""
        return self._lean_step() is not None and hasattr(self._step, "parts")

    @property
    def skips_idle_rows(self) -> bool:
        """Whether :meth:`advance` and the fused passes take ``idle`` rows and skip them (the
        lean steps; otherwise every row is computed)."""
        return self._lean_step() is not None

    @torch.inference_mode()
    def advance_and_start(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor, prompts: list[list[int]], max_new_tokens: int,
                          idle: torch.Tensor | None = None) -> DecodeState:
        """:meth:`advance` of ``state`` and :meth:`start` of ``prompts`` (a new state) in one
        pass of the lean step: the projections and MLP run once over the running rows' tokens
        and the prompts', attention over each one's own cache. Requires :attr:`can_fuse_prefill`
        and a state that records no attention."""
        new, _ = self.advance_fused(state, parents, tokens, prompts, max_new_tokens, idle=idle)
        return new

    @torch.inference_mode()
    def advance_fused(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor, prompts: list[list[int]] | None = None,
                      max_new_tokens: int = 0, blocks: list[tuple] = (), idle: torch.Tensor | None = None) -> tuple[DecodeState | None, list[torch.Tensor]]:
        """:meth:`advance` of ``state`` (None: no step), with in the same pass of the lean step
        the prefill of ``prompts`` (a new state, returned; None without prompts) and the
        verification of ``blocks``: ``(state, tokens, parents)`` of other decoder-only states,
        as their own :meth:`verify` (their ``(rows, n, vocab)`` logits are returned, in order). The
        projections and MLP run once over every part's tokens, attention over each part's own
        cache (``idle``: rows of ``state`` whose logits nobody reads, as in :meth:`advance`).
        Requires :attr:`can_fuse_prefill` and states that record no attention."""
        parts = [self._step_part(state, parents, tokens, idle)] if state is not None else []
        busy = active_of(parts[0]) if parts else None  # the step's rows computed
        hits = computed = prompt_part = None
        if prompts:  # the prompts the prompt cache holds are not computed
            ids, positions, prompt_mask, mask, cache = self._prefill_inputs(prompts, max_new_tokens)
            hits, computed, prompt_part = self._cached_prefill(prompts, ids, positions, prompt_mask, cache)
        prefills = int(prompt_part is not None)  # 0 when every prompt is cached
        parts += [prompt_part] if prefills else []
        parts += [self._verify_part(*block) for block in blocks]
        ahead = (state is not None) + prefills  # the step's and the prefill's parts
        hidden = self._step.parts(parts) if parts else []
        self.forward_count += bool(parts)
        ends = [h[:, -1] for h in hidden[:ahead]]
        if busy is not None:
            ends[0] = ends[0].index_select(0, busy)
        if prefills and computed is not None:
            ends[-1] = ends[-1].index_select(0, computed)
        verified = [h.reshape(-1, h.shape[-1]) for h in hidden[ahead:]]
        logits = self._project(torch.cat(ends + verified)) if parts else None
        at = 0
        if state is not None:
            at = ends[0].shape[0]
            state.logits = spread(logits[:at], busy, state.rows)  # idle rows: zero logits
            self._stepped(state)
        new = None
        if prompts:
            count = len(prompts) if computed is None else len(computed)
            mine = logits[at : at + count] if count else None
            new = self._prefilled(prompts, self._prefilled_logits(prompts, hits, computed, mine, cache), mask, prompt_mask, cache)
            at += count
        out = []
        for (block_state, block_tokens, _), h in zip(blocks, verified):
            out.append(logits[at : at + h.shape[0]].view(*block_tokens.shape, -1))
            at += h.shape[0]
            self._verified(block_state, block_tokens.shape[1])
        return new, out
