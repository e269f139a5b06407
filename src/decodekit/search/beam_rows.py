"""Beam search in per-prompt mode: the runs of separately arrived requests decided as one.

Mixed into :class:`~decodekit.search.beam.BeamSearchRun`. A run in per-prompt mode keeps each
prompt's own step count (``steps``) and length limit (``limits``), so runs that started at
different steps can be joined into one batch and prompts removed as they finish
(:class:`~decodekit.engine.beam_pool.BeamPool`). Every tensor of the run is ``(batch, ...)`` and
every operation of its step is per prompt, so a prompt's result does not depend on the others.
"""

from __future__ import annotations

import torch


def _widen(tensor: torch.Tensor, steps: int, fill) -> torch.Tensor:
    """``(batch, K, s)`` -> ``(batch, K, steps)``, the new steps filled with ``fill``."""
    if tensor.shape[2] == steps:
        return tensor
    wider = torch.full((*tensor.shape[:2], steps), fill, dtype=tensor.dtype, device=tensor.device)
    wider[:, :, : tensor.shape[2]] = tensor
    return wider



class PerPrompt:
    _PER_PROMPT = ("running_scores", "running_tokens", "running_logprobs", "pool_scores", "pool_logprob", "pool_tokens",
                   "pool_logprobs", "pool_lengths", "pool_finished", "can_improve", "bonus", "prompt_done")
    _STEPWISE = {"running_tokens": "pad", "running_logprobs": 0.0, "pool_tokens": "pad", "pool_logprobs": 0.0}
    """The ``(batch, K, steps)`` tensors, and what fills a step no prompt has reached."""

    @property
    def joinable(self) -> bool:
        """Whether this run can go :meth:`per_prompt` and :meth:`join` others: nothing in it
        reads a shared step or the batch (no sampler, stop strings, re-scoring, coverage or
        top log-probs)."""
        return (self.warpers is None and self.rescore is None and not self.beta and self.running_top is None
                and self.context.stop_check is None)

    def per_prompt(self) -> None:
        """From now on each prompt counts its own steps (from :attr:`steps`, 0 before the first
        decision), so runs that started at different times can :meth:`join`."""
        if self.steps is None:
            self.steps = [0] * self.running_scores.shape[0]

    def join(self, other: PerPrompt) -> None:
        """Append ``other``'s prompts (a per-prompt run of the same config) after this run's."""
        steps = max(self.running_tokens.shape[2], other.running_tokens.shape[2])
        pad = self.context.pad_token_id
        for name in self._PER_PROMPT:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in self._STEPWISE:
                fill = pad if self._STEPWISE[name] == "pad" else 0.0
                mine, theirs = (_widen(x, steps, fill) for x in (mine, theirs))
            setattr(self, name, torch.cat([mine, theirs]))
        self.steps = self.steps + other.steps
        self.limits = self.limits + other.limits
        self._reindex()

    def keep(self, prompts: list[int]) -> None:
        """Keep only these prompts (in this order)."""
        index = torch.tensor(prompts, dtype=torch.long, device=self.running_scores.device)
        for name in self._PER_PROMPT:
            setattr(self, name, getattr(self, name).index_select(0, index))
        self.steps = [self.steps[b] for b in prompts]
        self.limits = [self.limits[b] for b in prompts]
        self._reindex()

    def _reindex(self) -> None:
        B = self.running_scores.shape[0]
        self.row_offset = torch.arange(B, device=self.running_scores.device)[:, None] * self.width

