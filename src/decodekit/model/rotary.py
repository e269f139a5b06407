"""Dynamic NTK rotary embeddings, one frequency state per decoding state.

transformers' dynamic RoPE keeps its frequencies on the rotary module: they grow with the
largest position any forward has seen and reset only when a forward stays below the original
context. Shared by every request, that state would make a request's result depend on what else
was decoded before or beside it. :class:`OwnRotary` gives each decoding state its own: before a
forward the module gets the state's frequencies (a fresh prefill: the module's initial ones, as
a newly loaded model has), after it the state keeps what the forward left and the module gets
back what it held. Each request's rows then rotate exactly as transformers rotates that request
alone on a fresh model. Speculation is refused on these models (a draft's length would change
the frequencies of the tokens it verifies)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class OwnRotary:
    def __init__(self, model: torch.nn.Module):
        self.modules = [m for m in model.modules() if getattr(m, "rope_type", None) == "dynamic" and hasattr(m, "original_inv_freq")]
        self.initial = [self._read(m) for m in self.modules]

    @staticmethod
    def _read(module) -> tuple:
        return module.inv_freq, module.max_seq_len_cached, module.attention_scaling

    @contextlib.contextmanager
    def of(self, extra: dict | None) -> Iterator[None]:
        """While open, the rotary modules hold ``extra``'s frequencies (``extra["rotary"]``;
        absent: the initial ones); on leaving, ``extra`` keeps theirs."""
        if not self.modules or extra is None:
            yield
            return
        before = [self._read(m) for m in self.modules]
        self._write(extra.get("rotary", self.initial))
        try:
            yield
        finally:
            extra["rotary"] = [self._read(m) for m in self.modules]
            self._write(before)  # the module as it was: the model's own forward sees no change

    def _write(self, values: list[tuple]) -> None:
        for module, (inv_freq, cached, scaling) in zip(self.modules, values):
            module.register_buffer("inv_freq", inv_freq, persistent=False)
            module.max_seq_len_cached, module.attention_scaling = cached, scaling
