"""Merging two decoder-only states into one (continuous batching): one forward serves both."""

from __future__ import annotations

import torch

from decodekit.model.base import DecodeState


@torch.inference_mode()
def merge_states(first: DecodeState, second: DecodeState, at: int | None = None) -> DecodeState:
    """One state holding ``first``'s rows with ``second``'s inserted before row ``at``
    (default: after them all); requires :attr:`can_merge`. Consumes both states.

    The shorter state's rows get masked holes up to the longer one's length (zeroed, so a
    masked slot can never leak a NaN into the attention); keys keep their rotary positions
    and each row keeps its own next position."""
    a, b = first.extra, second.extra
    ra, rb = first.rows, second.rows
    at = ra if at is None else at
    length = max(a["length"], b["length"])
    la, lb = a["length"], b["length"]
    cache_a, cache_b = a["cache"], b["cache"]
    capacity = max(cache_a.capacity, length + cache_b.capacity - lb)
    # destination rows: first's [0, at) and [at, ra) around second's block
    head, block, tail = slice(0, at), slice(at, at + rb), slice(at + rb, ra + rb)

    def place(new: torch.Tensor, old_a: torch.Tensor, old_b: torch.Tensor, dim: int) -> None:
        """Copy both caches' rows (dimension ``dim``) and slots (dimension -2) into ``new``."""
        index, source = [slice(None)] * new.dim(), [slice(None)] * new.dim()
        for rows, src, tensor, span in ((head, slice(0, at), old_a, la), (block, slice(None), old_b, lb), (tail, slice(at, ra), old_a, la)):
            index[dim], source[dim] = rows, src
            new[tuple(index)][..., :span, :] = tensor[tuple(source)][..., :span, :]

    def holes(new: torch.Tensor, dim: int) -> None:
        """Zero the slots ``[own length, length)`` of the shorter state's rows."""
        index = [slice(None)] * new.dim()
        for rows, span in ((head, la), (block, lb), (tail, la)):
            if span < length:
                index[dim] = rows
                new[tuple(index)][..., span:length, :] = 0

    if cache_a.storage is not None and cache_b.storage is not None:
        sa, sb = cache_a.storage, cache_b.storage
        storage = sa.new_empty(*sa.shape[:2], ra + rb, sa.shape[3], capacity, sa.shape[5])
        place(storage, sa, sb, 2)
        holes(storage, 2)
        cache_a.storage, cache_a.capacity = storage, capacity
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers):
        if not layer_a.shared:
            for name in ("_key_buffer", "_value_buffer"):
                buf_a, buf_b = getattr(layer_a, name), getattr(layer_b, name)
                merged = buf_a.new_empty(ra + rb, buf_a.shape[1], capacity, buf_a.shape[3])
                place(merged, buf_a, buf_b, 0)
                holes(merged, 0)
                setattr(layer_a, name, merged)
            layer_a.capacity = capacity
        layer_a.length = length
        if layer_a.shared:
            cache_a._point(layer_a)
        else:
            layer_a._refresh_views()
    mask = a["mask"].new_zeros(ra + rb, max(a["mask"].shape[1], capacity))
    mask[head, :la] = a["mask"][:at, :la]
    mask[block, :lb] = b["mask"][:, :lb]
    mask[tail, :la] = a["mask"][at:, :la]

    def rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:at], y, x[at:]])

    extra = {
        "cache": cache_a,
        "mask": mask,
        "length": length,
        "next_position": rows(a["next_position"], b["next_position"]),
        "holes": True,
        "group": 1,
    }
    return DecodeState(rows(first.logits, second.logits), min(first.prompt_length, second.prompt_length), extra)
