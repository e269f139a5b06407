"""Per-prompt mode of the beam searches: the runs of separately arrived requests decided as one.

Mixed into :class:`~decodekit.search.beam.BeamSearchRun` and
:class:`~decodekit.search.diverse.DiverseBeamSearchRun`. A run in per-prompt mode keeps each
prompt's own step count (:attr:`PerPrompt.prompt_steps`) and length limit (``limits``), so
runs that started at different steps can be joined into one batch, and prompts removed as they
finish (:class:`~decodekit.engine.beam_pool.BeamPool`). Every tensor of a run is
``(batch, ...)`` and every operation of its step is per prompt, so a prompt's result does not
depend on the others.
"""

from __future__ import annotations

import dataclasses
from functools import reduce

import torch


def widen(tensor: torch.Tensor, steps: int, fill, dim: int) -> torch.Tensor:
    """``tensor`` with dimension ``dim`` grown to ``steps``, the new steps filled with ``fill``."""
    if tensor.shape[dim] == steps:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = steps
    wider = torch.full(shape, fill, dtype=tensor.dtype, device=tensor.device)
    wider.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    return wider


def put(tensor: torch.Tensor, at: int | torch.Tensor, values: torch.Tensor, dim: int) -> None:
    """Write ``values`` at step ``at`` of dimension ``dim`` (the step dimension; ``values`` lacks
    it): ``at`` one step for every prompt, or ``(batch,)`` steps, one per prompt."""
    if isinstance(at, int):
        tensor.select(dim, at).copy_(values)
        return
    lead = values.shape[:dim]
    index = at.view(-1, *([1] * (tensor.dim() - 1))).expand(*lead, 1, *values.shape[dim:])
    tensor.scatter_(dim, index, values.unsqueeze(dim))


class PerPrompt:
    """Per-prompt mode of a run whose ``(batch, ...)`` tensors are named in ``PER_PROMPT``
    (``STEPWISE``: those with a step dimension ``STEP_DIM``, and the fill of steps no prompt
    has reached; ``"running_top.values"``: an attribute's); the run defines ``_reindex`` (its
    batch-shaped helpers) and ``joinable``. Each prompt's generator goes with it."""

    PER_PROMPT: tuple[str, ...] = ()
    STEPWISE: dict[str, str | float] = {}
    STEP_DIM = 2
    prompt_steps: list[int] | None = None
    limits: list[int] = []

    def per_prompt(self) -> None:
        """From now on each prompt counts its own steps (0 before its first decision)."""
        if self.prompt_steps is None:
            B = self.running_scores.shape[0]
            self.prompt_steps, self.limits = [0] * B, [self.context.max_new_tokens] * B

    def _fields(self) -> list[str]:
        return [name for name in self.PER_PROMPT if self._get(name.split(".")[0]) is not None]

    def _get(self, name: str):
        return reduce(getattr, name.split("."), self)

    def _set(self, name: str, value: torch.Tensor) -> None:
        *path, last = name.split(".")
        setattr(reduce(getattr, path, self), last, value)

    def join(self, other: PerPrompt) -> None:
        """Append ``other``'s prompts (a per-prompt run of the same config) after this run's."""
        steps = max(self.running_tokens.shape[self.STEP_DIM], other.running_tokens.shape[self.STEP_DIM])
        for name in self._fields():
            mine, theirs = self._get(name), other._get(name)
            if name in self.STEPWISE:
                fill = self.context.pad_token_id if self.STEPWISE[name] == "pad" else self.STEPWISE[name]
                mine, theirs = (widen(x, steps, fill, self.STEP_DIM) for x in (mine, theirs))
            self._set(name, torch.cat([mine, theirs]))
        generators = self.context.generators + other.context.generators
        self.prompt_steps = self.prompt_steps + other.prompt_steps
        self.limits = self.limits + other.limits
        self._recontext(generators)

    def keep(self, prompts: list[int]) -> None:
        """Keep only these prompts (in this order)."""
        index = torch.tensor(prompts, dtype=torch.long, device=self.running_scores.device)
        for name in self._fields():
            self._set(name, self._get(name).index_select(0, index))
        generators = tuple(self.context.generators[b] for b in prompts) if self.context.generators else ()
        self.prompt_steps = [self.prompt_steps[b] for b in prompts]
        self.limits = [self.limits[b] for b in prompts]
        self._recontext(generators)

    def _recontext(self, generators: tuple) -> None:
        batch = len(self.prompt_steps)
        if len(generators) != batch:  # a run without one generator per prompt draws nothing
            generators = ()
        self.context = dataclasses.replace(self.context, batch_size=batch, generators=generators)
        self._reindex()

    def _step_now(self, t: int) -> tuple[int | torch.Tensor, int | list[int]]:
        """The step a decision writes (shared, or ``(batch,)`` per prompt) and the lengths
        the candidates reach (shared, or one per prompt)."""
        if self.prompt_steps is None:
            return t, t + 1
        now = torch.tensor(self.prompt_steps, dtype=torch.long, device=self.running_scores.device)
        return now, [n + 1 for n in self.prompt_steps]

    def _penalty(self, length: int | list[int], dims: int = 1) -> float | torch.Tensor:
        """The length penalty at ``length`` (every prompt's), or at each prompt's own
        (``(batch, 1, ...)`` with ``dims`` unit dimensions, the same float32 values a shared
        length gives)."""
        if isinstance(length, int):
            return self.penalty(length)
        per = torch.tensor([self.penalty(n) for n in length], dtype=torch.float32, device=self.running_scores.device)
        return per.view(-1, *([1] * dims))

    def _lengths(self, lengths: int | list[int], like: torch.Tensor) -> torch.Tensor:
        """``like``-shaped lengths: shared, or each prompt's along dimension 0."""
        if isinstance(lengths, int):
            return torch.full_like(like, lengths)
        per = torch.tensor(lengths, dtype=like.dtype, device=like.device)
        return per.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


class BeamPerPrompt(PerPrompt):
    """Per-prompt mode of :class:`~decodekit.search.beam.BeamSearchRun` (``(batch, K, ...)``)."""

    PER_PROMPT = ("running_scores", "running_tokens", "running_logprobs", "pool_scores", "pool_logprob", "pool_tokens",
                  "pool_logprobs", "pool_lengths", "pool_finished", "can_improve", "bonus", "prompt_done",
                  "running_top.values", "running_top.ids", "pool_top.values", "pool_top.ids")
    STEPWISE = {"running_tokens": "pad", "running_logprobs": 0.0, "pool_tokens": "pad", "pool_logprobs": 0.0,
                "running_top.values": 0.0, "running_top.ids": 0, "pool_top.values": 0.0, "pool_top.ids": 0}

    @property
    def joinable(self) -> bool:
        """Whether this run can go per-prompt and join others: nothing in it reads a shared
        step or the batch (no re-scoring or coverage; beam sampling draws from each prompt's
        own generator, stop strings are checked per prompt)."""
        return self.rescore is None and not self.beta

    def _reindex(self) -> None:
        self.row_offset = torch.arange(self.running_scores.shape[0], device=self.running_scores.device)[:, None] * self.width


class DiversePerPrompt(PerPrompt):
    """Per-prompt mode of :class:`~decodekit.search.diverse.DiverseBeamSearchRun`
    (``(batch, groups, K, ...)``)."""

    PER_PROMPT = ("running_scores", "running_logprob", "running_tokens", "running_logprobs", "pool_scores", "pool_sum",
                  "pool_logprob", "pool_tokens", "pool_logprobs", "pool_lengths", "pool_valid", "done", "prompt_done")
    STEPWISE = {"running_tokens": "pad", "running_logprobs": 0.0, "pool_tokens": "pad", "pool_logprobs": 0.0}
    STEP_DIM = 3

    @property
    def joinable(self) -> bool:
        """Whether this run can go per-prompt and join others: a diversity function that reads
        only this step's tokens (Hamming), no top log-probs."""
        return not self.diversity.needs_history and self.running_top is None

    def _reindex(self) -> None:
        batch, groups, K = self.running_scores.shape
        device = self.running_scores.device
        self.shape = (batch, groups, K)
        self.local = torch.arange(K, device=device).expand(self.shape)
        self.row_offset = (torch.arange(batch * groups, device=device) * K).view(batch, groups, 1)
