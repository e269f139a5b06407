"""Prefilled prompts kept for reuse: a prompt seen before (the same tokens: a server's repeated
or templated prompts, ``n`` samples sent as separate requests, best-of-N) skips its prefill, and
its rows start from the keys/values and next-token logits computed the first time.

:class:`PromptCache` is bounded by bytes, least recently used out first. Its entries belong to
the weights they were computed with: at every lookup a fingerprint of the model's parameters and
buffers (each one's storage and version counter, which every in-place change bumps) is compared
with the entries' and a changed model empties the cache. A change made through ``.data``
bypasses version counters; call :meth:`PromptCache.clear` after one.

:class:`CachedPrefills` is the adapter's side (mixed into
:class:`~decodekit.model.hf.HFLanguageModel`): the lean prefill, alone or fused into a step,
leaves the prompts that hit out of its arithmetic and writes their cached slots in. A hit's
keys/values are those of an earlier prefill of the same prompt, so a row's results stay what
they are without the cache up to float rounding (the same rounding as a prompt prefilled in a
different batch)."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import torch

PREFIX_BLOCK = 16
"""Prompts share cached prefixes in whole blocks of this many tokens."""


class PromptCache:
    """Prefilled prompts: ``tuple(prompt)`` -> ``(keys_values, logits)``, at most ``max_bytes``
    of tensors, least recently used evicted first. A prompt not held whole may still share a
    prefix of whole :data:`PREFIX_BLOCK` s with one held (a chat's system prompt, an earlier
    turn of the conversation, a few-shot preamble): those tokens' keys/values are taken from it."""

    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self.prefix_hits = self.prefix_tokens = 0  # prompts that took a prefix; tokens taken
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # the held prompts' blocks as a tree: (parent node, block) -> (node, prompts through it)
        self._blocks: dict[tuple[int, tuple[int, ...]], tuple[int, dict]] = {}
        self._nodes = itertools.count(1)
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._blocks.clear()
            self.bytes = 0

    def lookup(self, prompts: list[list[int]], stamp: tuple, prefixes: bool = True) -> list[tuple[torch.Tensor, torch.Tensor | None] | None]:
        """Each prompt's entry (None: nothing cached): ``(keys_values, logits)`` for a prompt
        held whole, and with ``prefixes``, ``(keys_values of its first k tokens, None)`` for one
        sharing a prefix of ``k`` tokens (whole blocks, fewer than its length) with a held
        prompt. ``stamp``: the model's weights now."""
        with self._lock:
            if stamp != self._stamp:
                self._entries.clear()
                self._blocks.clear()
                self.bytes, self._stamp = 0, stamp
            out = []
            for prompt in prompts:
                key = tuple(prompt)
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                else:
                    entry = self._prefix(key) if prefixes else None
                    self.misses += 1
                out.append(entry)
            return out

    def _prefix(self, key: tuple[int, ...]) -> tuple[torch.Tensor, None] | None:
        """The longest held prefix of ``key`` in whole blocks, shorter than ``key``."""
        parent, found, length = 0, None, 0
        for start in range(0, len(key) - PREFIX_BLOCK, PREFIX_BLOCK):  # at least one token left
            node = self._blocks.get((parent, key[start : start + PREFIX_BLOCK]))
            if node is None:
                break
            parent, found, length = node[0], node[1], start + PREFIX_BLOCK
        if found is None:
            return None
        holder = next(reversed(found))  # the most recently stored prompt through that block
        self._entries.move_to_end(holder)
        self.prefix_hits += 1
        self.prefix_tokens += length
        return self._entries[holder][0][..., :length, :], None

    def _walk(self, key: tuple[int, ...], add: bool) -> None:
        """Add ``key`` to (or remove it from) the block tree along its whole blocks."""
        parent = 0
        for start in range(0, len(key) - PREFIX_BLOCK + 1, PREFIX_BLOCK):
            edge = (parent, key[start : start + PREFIX_BLOCK])
            node = self._blocks.get(edge)
            if node is None:
                if not add:
                    return
                node = self._blocks[edge] = (next(self._nodes), {})
            if add:
                node[1][key] = None
            else:
                node[1].pop(key, None)
                if not node[1]:
                    del self._blocks[edge]
            parent = node[0]

    def store(self, prompt: list[int], keys_values: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep ``prompt``'s ``(layers, 2, heads, len(prompt), dim)`` keys/values and its
        ``(vocab,)`` next-token logits (copies are taken)."""
        size = keys_values.numel() * keys_values.element_size() + logits.numel() * logits.element_size()
        key = tuple(prompt)
        with self._lock:
            if size > self.max_bytes or key in self._entries:
                return
            self._entries[key] = (keys_values.clone(), logits.clone())
            self._walk(key, add=True)
            self.bytes += size
            while self.bytes > self.max_bytes:
                old, (kv, lg) = self._entries.popitem(last=False)
                self._walk(old, add=False)
                self.bytes -= kv.numel() * kv.element_size() + lg.numel() * lg.element_size()


def weights_stamp(module: torch.nn.Module) -> tuple:
    """What identifies ``module``'s weights now: every parameter's and buffer's storage and
    version counter."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))


class CachedPrefills:
    """The lean prefill with a :class:`PromptCache` (``prompt_cache``; None: off)."""

    prompt_cache: PromptCache | None = None

    def _prefill_hits(self, prompts: list[list[int]], prefixes: bool = True) -> list | None:
        """Each prompt's cache entry or None (:meth:`PromptCache.lookup`); None when no prompt
        hit (or there is no cache)."""
        if self.prompt_cache is None:
            return None
        hits = self.prompt_cache.lookup(prompts, weights_stamp(self.model), prefixes)
        return hits if any(h is not None for h in hits) else None

    def _cached_prefill(self, prompts: list[list[int]], ids, positions, prompt_mask, cache) -> tuple:
        """``(hits, computed, part)``: each prompt's whole-prompt cache entry (None: no prompt
        held whole), the prompts the prefill computes (None: all of them) and the lean step's
        part for them (None: every prompt is cached). A computed prompt that shares a cached
        prefix computes only the rest: its prefix's keys/values are written into ``cache`` as
        the forward goes (:attr:`~decodekit.model.cache.PreallocatedCache.known`)."""
        found = self._prefill_hits(prompts)
        if found is None:
            return None, None, self._prefill_part(ids, positions, prompt_mask, cache)
        width = ids.shape[1]
        hits = [h if h is not None and h[1] is not None else None for h in found]  # held whole
        known = [(row, width - len(p), h[0]) for row, (p, h) in enumerate(zip(prompts, found)) if h is not None and h[1] is None]
        skip = None
        if known:
            cache.known = known
            skip = torch.zeros(len(prompts), dtype=torch.long)
            for row, start, kv in known:
                skip[row] = start + kv.shape[-2]  # the slots before it are padding or known
        if all(h is None for h in hits):
            return None, None, self._prefill_part(ids, positions, prompt_mask, cache, known_until=skip)
        computed = torch.tensor([i for i, h in enumerate(hits) if h is None], dtype=torch.long, device=ids.device)
        return hits, computed, self._prefill_part(ids, positions, prompt_mask, cache, computed, known_until=skip) if len(computed) else None

    def _forward_prefill(self, prompts: list[list[int]], max_new_tokens: int, ids, positions, prompt_mask, cache, record: dict) -> torch.Tensor:
        """The prefill through the model's own forward (no lean step) with the prompt cache:
        the prompts held whole are left out of the forward, which runs over the others alone
        (their own batch and padding: a prompt's keys/values do not depend on the batch, as for
        every model whose rows may merge); their slots are copied in, right-aligned as in the
        whole batch. Prompts sharing only a prefix are computed whole (the forward computes
        every token it is given), so prefixes are not looked up.

        Subtle: only a cache with every layer in its one storage is ever stored, and the same
        model lays out every prefill's cache alike, so with a hit the part's cache has one too."""
        hits = self._prefill_hits(prompts, prefixes=False)
        if hits is None:
            logits = self._forward(record, input_ids=ids, attention_mask=prompt_mask, position_ids=positions, **{self._cache_kw: cache})
            return self._prefilled_logits(prompts, None, None, logits, cache)
        rows = [i for i, h in enumerate(hits) if h is None]
        computed = torch.tensor(rows, dtype=torch.long, device=ids.device)
        logits = None
        if rows:
            part = [prompts[i] for i in rows]
            part_ids, part_positions, part_mask, _, part_cache = self._prefill_inputs(part, max_new_tokens)
            logits = self._forward(record, input_ids=part_ids, attention_mask=part_mask, position_ids=part_positions, **{self._cache_kw: part_cache})
            width, part_width = ids.shape[1], part_ids.shape[1]
            storage = _storage_for(cache, len(prompts), width, next(h for h in hits if h is not None)[0])
            storage[:, :, computed, :, width - part_width : width] = part_cache.storage[:, :, :, :, :part_width]
        return self._prefilled_logits(prompts, hits, computed, logits, cache)

    def _prefilled_logits(self, prompts: list[list[int]], hits: list | None, computed: torch.Tensor | None,
                          logits: torch.Tensor | None, cache) -> torch.Tensor:
        """All prompts' next-token logits, from the computed prompts' ``logits`` (rows
        ``computed``) and the hits' entries, whose keys/values are written into ``cache``; the
        computed prompts are stored."""
        width = max(len(p) for p in prompts)
        if hits is not None:
            entries = [h for h in hits if h is not None]
            storage = _storage_for(cache, len(prompts), width, entries[0][0])
            out = entries[0][1].new_empty(len(prompts), entries[0][1].shape[-1])
            if logits is not None and len(computed):
                out.index_copy_(0, computed, logits)
            for row, (prompt, hit) in enumerate(zip(prompts, hits)):
                if hit is not None:
                    storage[:, :, row, :, width - len(prompt) : width] = hit[0]
                    out[row] = hit[1]
        else:
            out = logits
        cache.known = None  # written by the forward
        if self.prompt_cache is not None and _cacheable(cache):
            storage = cache.storage
            for row, prompt in enumerate(prompts):
                if (hits is None or hits[row] is None) and prompt:
                    self.prompt_cache.store(prompt, storage[:, :, row, :, width - len(prompt) : width], out[row])
        return out


def _cacheable(cache) -> bool:
    """Whether every layer of ``cache`` lives in its one storage tensor."""
    return cache.storage is not None and len(cache.layers) == cache.num_layers and all(layer.shared for layer in cache.layers)


def _storage_for(cache, rows: int, width: int, sample: torch.Tensor) -> torch.Tensor:
    """``cache``'s storage, allocated (zeroed, every layer pointing into it, ``width`` slots
    long) when no forward wrote it: every prompt hit."""
    if cache.storage is None:
        layers, _, heads, _, dim = sample.shape
        cache.storage = sample.new_zeros(layers, 2, rows, heads, cache.capacity, dim)
        while len(cache.layers) < layers:
            cache.layers.append(cache.layer_class_to_replicate())
        for layer in cache.layers:
            layer.dtype, layer.device = sample.dtype, sample.device
            layer.shared = layer.is_initialized = True
            layer.length = width
            cache._point(layer)
    return cache.storage
