"""Merging two decoder-only states into one (continuous batching): one forward serves both."""

from __future__ import annotations

import torch

from decodekit.model import support
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

    # Every new tensor is built before ``first`` is touched: a failure (memory) leaves it as it was.
    storage = None
    if cache_a.storage is not None and cache_b.storage is not None:
        sa, sb = cache_a.storage, cache_b.storage
        storage = sa.new_empty(*sa.shape[:2], ra + rb, sa.shape[3], capacity, sa.shape[5])
        place(storage, sa, sb, 2)
        holes(storage, 2)
    buffers = []
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers):
        if not layer_a.shared:
            for name in ("_key_buffer", "_value_buffer"):
                buf_a, buf_b = getattr(layer_a, name), getattr(layer_b, name)
                merged = buf_a.new_empty(ra + rb, buf_a.shape[1], capacity, buf_a.shape[3])
                place(merged, buf_a, buf_b, 0)
                holes(merged, 0)
                buffers.append((layer_a, name, merged))
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
    logits = rows(first.logits, second.logits)
    # commit: from here on nothing allocates
    if storage is not None:
        cache_a.storage, cache_a.capacity = storage, capacity
    for layer_a, name, merged in buffers:
        setattr(layer_a, name, merged)
        layer_a.capacity = capacity
    _set_length(cache_a, length)
    return DecodeState(logits, min(first.prompt_length, second.prompt_length), extra)


def _set_length(cache, length: int) -> None:
    """Every layer of ``cache`` at ``length`` slots, its views remade over its buffers."""
    for layer in cache.layers:
        layer.length = length
        if layer.shared:
            cache._point(layer)
        else:
            layer._refresh_views()


@torch.inference_mode()
def insert_rows(target: DecodeState, source: DecodeState, rows: torch.Tensor) -> bool:
    """Write ``source``'s rows over ``target``'s rows ``rows`` (free slots of requests that
    left), in place: only the new rows are copied, not the whole cache. Their slots past their
    own length become masked, zeroed holes; a longer prompt than ``target``'s length lengthens
    it (every other row gets masked holes there). False, changing nothing, when the caches do
    not have the same layout or ``target`` has no room (then :func:`merge_states` instead)."""
    a, b = target.extra, source.extra
    cache_a, cache_b = a["cache"], b["cache"]
    length, lb = max(a["length"], b["length"]), b["length"]
    if (cache_a.storage is None) != (cache_b.storage is None) or length > cache_a.capacity:
        return False
    if any(la.shared != lb_.shared for la, lb_ in zip(cache_a.layers, cache_b.layers)) or len(cache_a.layers) != len(cache_b.layers):
        return False
    old = a["length"]
    # what allocates comes first: a failure (memory) leaves ``target`` as it was
    mask = a["mask"]
    if mask.shape[1] < length:
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])], dim=1)
    next_position = a["next_position"].index_copy(0, rows, b["next_position"])
    logits = target.logits.index_copy(0, rows, source.logits)
    tensors = [(cache_a.storage, cache_b.storage, 2)] if cache_a.storage is not None else []
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers):
        if not layer_a.shared:
            tensors += [(getattr(layer_a, n), getattr(layer_b, n), 0) for n in ("_key_buffer", "_value_buffer")]
    for new, src, dim in tensors:  # the rows written are free ones: no running row reads them
        if length > old:  # every row's slots [old, length) become zeroed holes
            new.narrow(-2, old, length - old).zero_()
        new.narrow(-2, 0, lb).index_copy_(dim, rows, src.narrow(-2, 0, lb))
        if length > lb:
            new.narrow(-2, lb, length - lb).index_fill_(dim, rows, 0)
    _set_length(cache_a, length)
    mask[:, old:length] = 0
    mask.index_fill_(0, rows, 0)
    mask[:, :lb].index_copy_(0, rows, b["mask"][:, :lb].to(mask.dtype))
    a["mask"], a["length"], a["holes"], a["group"] = mask, length, True, 1
    a["next_position"] = next_position
    target.logits = logits
    target.prompt_length = min(target.prompt_length, source.prompt_length)
    return True


@torch.inference_mode()
def release_rows(state: DecodeState, rows: torch.Tensor) -> None:
    """Rows no request holds any more: mask their cache slots out (they decode padding until
    :func:`insert_rows` reuses them), so they hold no real slot that stops compaction."""
    state.extra["mask"].index_fill_(0, rows, 0)
    state.extra["holes"] = True


@torch.inference_mode()
def holes_change_nothing(model) -> bool:
    """Whether ``model`` (a decoder-only adapter) decodes a row the same after merging it with
    a state of another length (masked holes in the shorter rows) as it does alone: two short
    prompts, prefilled apart, one a step ahead, merged, then two steps compared with the same
    rows decoded apart (logits within float32 rounding of each other)."""
    def ids(count: int, start: int) -> list[int]:
        return [3 + (start + 7 * i) % max(model.vocab_size - 3, 1) for i in range(count)]

    first, second = ids(9, 11), ids(3, 29)
    ahead, behind = model.start([first], 4), model.start([second], 4)
    one = torch.zeros(1, dtype=torch.long, device=ahead.logits.device)
    alone_ahead, alone_behind = model.fork(ahead, one), model.fork(behind, one)  # copies, not a second prefill
    token = ahead.logits.argmax(-1)
    model.advance(ahead, None, token)
    model.advance(alone_ahead, None, token)
    merged = merge_states(ahead, behind)
    for _ in range(2):
        tokens = merged.logits.argmax(-1)
        model.advance(merged, None, tokens)
        model.advance(alone_ahead, None, tokens[:1])
        model.advance(alone_behind, None, tokens[1:])
        apart = torch.cat([alone_ahead.logits, alone_behind.logits])
        scale = max(1.0, float(apart.abs().max()))
        if not bool(torch.isfinite(merged.logits).all()) or float((merged.logits - apart).abs().max()) > 1e-4 * scale:
            return False
    return True


class MergingStates:
    """The adapter's side of continuous batching (mixed into
    :class:`~decodekit.model.hf.HFLanguageModel`): whether its states merge, and merging,
    inserting and releasing rows."""

    _merge_checked: bool | None = None  # holes_change_nothing's answer, for an architecture outside the tested set
    _merge_known: tuple[bool, bool | None] | None = None  # (lean step?, support.can_merge's answer)

    @property
    def can_merge(self) -> bool:
        """True when rows of separately prefilled batches may share one state (see
        :func:`decodekit.model.support.can_merge`)."""
        lean = self._step is not None
        if self._merge_known is None or self._merge_known[0] != lean:  # read once: it inspects the model
            self._merge_known = (lean, support.can_merge(self.model, self.is_encoder_decoder, lean))
        known = self._merge_known[1]
        if known is None:  # an architecture outside the tested set: checked once on the model
            if self._merge_checked is None:
                counted, self.prompt_cache, kept = self.forward_count, None, self.prompt_cache
                try:
                    self._merge_checked = holes_change_nothing(self)
                except Exception:  # a model the check cannot run on decodes each batch apart
                    self._merge_checked = False
                finally:
                    self.forward_count, self.prompt_cache = counted, kept
            return self._merge_checked
        return known

    def merge(self, first: DecodeState, second: DecodeState, at: int | None = None) -> DecodeState:
        """One state: ``first``'s rows with ``second``'s inserted before row ``at``
        (:func:`decodekit.model.merge.merge_states`)."""
        return merge_states(first, second, at)

    def insert(self, state: DecodeState, new: DecodeState, rows: torch.Tensor) -> bool:
        """Write ``new``'s rows over ``state``'s free rows ``rows`` in place; False if it
        cannot (:func:`decodekit.model.merge.insert_rows`). Requires :attr:`can_merge`."""
        return insert_rows(state, new, rows)

    def release(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Rows no request holds any more (:func:`decodekit.model.merge.release_rows`)."""
        release_rows(state, rows)
