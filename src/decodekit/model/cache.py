"""A key/value cache that is allocated once and written in place.

transformers' ``DynamicCache`` concatenates at every step (copying the whole cache) and its beam
reorder copies every layer from position 0. Here each layer holds one buffer
``(rows, heads, capacity, head_dim)``: a step writes its new keys/values into
``[length, length + n)`` and the attention reads a *view* of ``[0, length + n)``, so nothing is
copied. A beam reorder copies only positions ``[shared, length)``: every row of a prompt holds the
same prompt keys/values, so the prompt region never needs to move.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One attention layer's keys/values in a preallocated buffer (see module docstring)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, key_dim = key_states.shape
        self._key_buffer = key_states.new_empty(rows, heads, self.capacity, key_dim)
        self._value_buffer = value_states.new_empty(
            rows, value_states.shape[1], self.capacity, value_states.shape[-1]
        )
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def _grow(self, needed: int) -> None:
        # Subtle: only reached when a caller under-estimates the capacity; doubling keeps it amortised.
        capacity = max(needed, 2 * self.capacity)
        for name in ("_key_buffer", "_value_buffer"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``(rows, heads, n, dim)`` states at ``[length, length + n)``; return views of all."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self._key_buffer[:, :, self.length : end] = key_states
        self._value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def select_rows(self, rows: torch.Tensor) -> None:
        """New row i = old row ``rows[i]`` over the whole length; the row count may change."""
        if self.is_initialized:
            self._key_buffer = self._key_buffer.index_select(0, rows)
            self._value_buffer = self._value_buffer.index_select(0, rows)
            self._refresh_views()

    def reorder_from(self, parents: torch.Tensor, start: int) -> None:
        """New row i = old row ``parents[i]`` on positions ``[start, length)``, in place."""
        if self.is_initialized and self.length > start:
            span = slice(start, self.length)
            self._key_buffer[:, :, span] = self._key_buffer[parents, :, span]
            self._value_buffer[:, :, span] = self._value_buffer[parents, :, span]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative rollback)."""
        self.length = min(self.length, length)
        if self.is_initialized:
            self._refresh_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.select_rows(beam_idx)

    def crop(self, max_length: int) -> None:
        self.truncate(max_length if max_length >= 0 else self.length + max_length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select_rows(indices)


class PreallocatedCache(Cache):
    """A transformers ``Cache`` whose layers are :class:`PreallocatedLayer` s."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])

    def select_rows(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select_rows(rows)

    def reorder_from(self, parents: torch.Tensor, start: int) -> None:
        for layer in self.layers:
            layer.reorder_from(parents, start)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)
