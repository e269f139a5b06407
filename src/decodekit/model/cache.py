"""A key/value cache that is allocated once and written in place.

transformers' ``DynamicCache`` concatenates at every step (copying the whole cache) and its beam
reorder copies every layer from position 0. Here all layers share one storage
``(layers, 2, rows, heads, capacity, head_dim)`` (keys and values): a step writes its new
states into ``[length, length + n)`` and the attention reads a *view* of ``[0, length + n)``, so
nothing is copied. A beam reorder is one gather + one copy for all layers at once, and only of
positions ``[shared, length)``: every row of a prompt holds the same prompt keys/values, so the
prompt region never moves. Layers whose shapes differ from the first layer's (rare hybrid
models) fall back to buffers of their own.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache


class PreallocatedLayer(DynamicLayer):
    """One attention layer's keys/values: views into its cache's shared storage."""

    def __init__(self, capacity: int, owner: PreallocatedCache | None = None, index: int = 0):
        super().__init__()
        self.capacity, self.owner, self.index = capacity, owner, index
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self.shared = False  # True while the buffers are views of the owner's storage

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.owner is not None and self.owner.attach(self, key_states, value_states):
            self.shared = True
        else:
            rows, heads, _, key_dim = key_states.shape
            self._key_buffer = key_states.new_empty(rows, heads, self.capacity, key_dim)
            self._value_buffer = value_states.new_empty(rows, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def _grow(self, needed: int) -> None:
        # Subtle: only reached when a caller under-estimates the capacity; doubling keeps it amortised.
        if self.shared:
            self.owner.grow(max(needed, 2 * self.capacity))
            return
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
        if self.length == 0 and self.owner is not None and getattr(self.owner, "known", None):
            for row, start, kv in self.owner.known:  # a prefill's rows' cached prefixes
                self._key_buffer[row, :, start : start + kv.shape[-2]] = kv[self.index, 0]
                self._value_buffer[row, :, start : start + kv.shape[-2]] = kv[self.index, 1]
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def select_rows(self, rows: torch.Tensor) -> None:
        """New row i = old row ``rows[i]`` over the whole length; the row count may change."""
        if self.is_initialized and not self.shared:
            self._key_buffer = self._key_buffer.index_select(0, rows)
            self._value_buffer = self._value_buffer.index_select(0, rows)
            self._refresh_views()

    def reorder_from(self, parents: torch.Tensor, start: int) -> None:
        """New row i = old row ``parents[i]`` on positions ``[start, length)``, in place."""
        if self.is_initialized and not self.shared and self.length > start:
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
    """A transformers ``Cache`` of :class:`PreallocatedLayer` s sharing one storage tensor.

    ``num_layers`` is the expected layer count (the storage's size); a model with more layers
    still works, the extra ones get their own buffers.
    """

    def __init__(self, num_layers: int, capacity: int):
        self.num_layers, self.capacity = num_layers, capacity
        self.storage: torch.Tensor | None = None  # (layers, 2, rows, heads, capacity, dim)
        # a prefill's known slots: (row, first slot, (layers, 2, heads, n, dim) keys/values),
        # written over whatever the prefill's forward computed there (a prompt cache's prefixes)
        self.known: list[tuple[int, int, torch.Tensor]] | None = None
        super().__init__(layer_class_to_replicate=self._new_layer)

    def _new_layer(self) -> PreallocatedLayer:
        return PreallocatedLayer(self.capacity, self, len(self.layers))

    def attach(self, layer: PreallocatedLayer, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Point ``layer`` at its slice of the storage (allocated on first use); False if the
        layer does not fit the storage's shape."""
        if keys.shape != values.shape or layer.index >= self.num_layers:
            return False
        rows, heads, _, dim = keys.shape
        if self.storage is None:
            self.storage = keys.new_empty(self.num_layers, 2, rows, heads, self.capacity, dim)
        elif self.storage.shape[2:4] != (rows, heads) or self.storage.shape[-1] != dim:
            return False
        self._point(layer)
        return True

    def _point(self, layer: PreallocatedLayer) -> None:
        layer._key_buffer = self.storage[layer.index, 0]
        layer._value_buffer = self.storage[layer.index, 1]
        layer.capacity = self.storage.shape[4]
        layer._refresh_views()

    def _shared_layers(self) -> list[PreallocatedLayer]:
        return [layer for layer in self.layers if layer.shared]

    def grow(self, capacity: int) -> None:
        old = self.storage
        self.storage = old.new_empty(*old.shape[:4], capacity, old.shape[5])
        length = max(layer.length for layer in self._shared_layers())
        self.storage[:, :, :, :, :length] = old[:, :, :, :, :length]
        self.capacity = capacity
        for layer in self._shared_layers():
            self._point(layer)

    def select_rows(self, rows: torch.Tensor) -> None:
        """New row i = old row ``rows[i]``; the row count may change (fan-out)."""
        if self.storage is not None:
            shared = self._shared_layers()
            length = max((layer.length for layer in shared), default=0)
            old = self.storage
            # only the written slots [0, length) are copied; the rest is written before it is read
            self.storage = old.new_empty(*old.shape[:2], len(rows), *old.shape[3:])
            self.storage[:, :, :, :, :length] = old[:, :, :, :, :length].index_select(2, rows)
            for layer in shared:
                self._point(layer)
        for layer in self.layers:
            layer.select_rows(rows)

    def reorder_from(self, parents: torch.Tensor, start: int) -> None:
        """New row i = old row ``parents[i]`` on positions ``[start, length)``: one gather and
        one copy for every layer together."""
        shared = self._shared_layers()
        if self.storage is not None and shared:
            length = shared[0].length
            if length > start:
                if self.storage.device.type == "cpu":
                    # Only rows whose parent is another row need a copy; finding them costs a
                    # host read, which is free on the CPU (on an accelerator, copy all rows).
                    moved = (parents != torch.arange(len(parents), device=parents.device)).nonzero().squeeze(1)
                    if len(moved):
                        # gather into a fresh tensor, then copy back: cheaper than an
                        # advanced-indexing assignment on this 6-D strided region
                        region = self.storage[:, :, :, :, start:length]
                        region.index_copy_(2, moved, region.index_select(2, parents.index_select(0, moved)))
                else:
                    region = self.storage[:, :, :, :, start:length]
                    region.copy_(region.index_select(2, parents))
        for layer in self.layers:
            layer.reorder_from(parents, start)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)


def twin(cache: Cache) -> Cache:
    """A copy of ``cache``'s structure (the cache and layer objects) that still shares the
    original's tensors. Every row operation (``select_rows``, ``batch_select_indices``)
    *replaces* tensors instead of writing into them, so selecting rows of the twin gives an
    independent copy of those rows and leaves ``cache`` as it was (forking a branch)."""
    if isinstance(cache, EncoderDecoderCache):
        out = copy.copy(cache)
        out.self_attention_cache = twin(cache.self_attention_cache)
        out.cross_attention_cache = twin(cache.cross_attention_cache)
        out.is_updated = dict(cache.is_updated)
        return out
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        if getattr(layer, "owner", None) is cache:
            layer.owner = out
    return out
