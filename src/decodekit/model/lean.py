"""What every lean step shares (:mod:`decodekit.model.fast_llama`,
:mod:`decodekit.model.fast_gpt2`): when it still reproduces the model, and the attention kernel
for a step or a block over the preallocated cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _module

from decodekit.model import attention
from decodekit.model.layout import Projections

_global_hooks = (_module._global_forward_hooks, _module._global_forward_pre_hooks)


class LeanStep:
    """Base of the lean steps: subclasses set ``embed`` (the input embedding weight),
    ``modules`` (the model's modules) and ``scale`` (the attention scale)."""

    embed: torch.Tensor
    modules: list[torch.nn.Module]
    scale: float
    head: Projections | None = None  # the output layer, for few-row steps (set by a subclass)

    def project(self, output: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
        """``output(hidden)`` from the head's few-row layout (:mod:`decodekit.model.layout`),
        or None where it does not serve: more rows, or an output layer other than the one
        the step was built with."""
        rows = hidden.numel() // hidden.shape[-1]
        if self.head is None or rows > self.head.rows or self.head.linears[0] is not output:
            return None
        self.head.refresh()
        return self.head(hidden.reshape(rows, hidden.shape[-1]), 0).reshape(*hidden.shape[:-1], -1)

    def usable(self) -> bool:
        """Whether the step still reproduces the model: weights float32 on the CPU, and no
        forward hook registered since :meth:`build` (hooks must see the model's own calls)."""
        hooks = self.__dict__.get("_hooks")
        if hooks is None or len(hooks) != 2 * len(self.modules):  # each module's hook dicts, read once
            hooks = self._hooks = [d for m in self.modules for d in (m._forward_hooks, m._forward_pre_hooks)]
        return (
            self.embed.dtype == torch.float32
            and self.embed.device.type == "cpu"
            and not (_global_hooks[0] or _global_hooks[1])
            and not any(hooks)
        )

    def _attend(self, query, keys, values, mask, plan) -> torch.Tensor:
        """``query``: ``(rows, H, n, d)`` -> ``(rows, n, H*d)``."""
        rows, H, n, d = query.shape
        Hkv = keys.shape[1]
        if n == 1 and plan is not None and attention.can_share(keys.shape[2], rows, mask, plan):
            return attention.attend_shared(query, keys, values, mask, self.scale, *plan).reshape(rows, 1, H * d)
        if n == 1:  # one query position: the heads of a kv group become its query rows
            packed = query.reshape(rows, Hkv, H // Hkv, d)
            out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=self.scale)
            return out.reshape(rows, 1, H * d)
        if mask is None:  # a block after the cache: causal within the block
            length = keys.shape[2]
            mask = torch.ones(n, length, dtype=torch.bool, device=query.device).tril(length - n)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=H != Hkv
        )
        return out.transpose(1, 2).reshape(rows, n, H * d)


def active_of(part: tuple) -> torch.Tensor | None:
    """A lean part's ``active`` token indices (None: all of its tokens are computed)."""
    return part[5] if len(part) > 5 else None


def spread(x: torch.Tensor, active: torch.Tensor | None, size: int) -> torch.Tensor:
    """``(len(active), C)`` results of the ``active`` entries -> ``(size, C)``, zeros elsewhere
    (``x`` itself when ``active`` is None: every entry was computed)."""
    return x if active is None else x.new_zeros(size, x.shape[-1]).index_copy_(0, active, x)


class Packing:
    """Which tokens of each part a lean pass computes: a part is ``(tokens, positions, cache,
    mask, plan)``, or with a sixth entry ``active``, the flat indices (into its ``rows * n``
    tokens) of the tokens whose results are read; the others' never are (a pool's free rows,
    a prefill's left padding). The embedding, projections, norms and MLP run over the active
    tokens only; attention sees every token's slot, the others' queries, keys and values zero
    (finite, and masked out of every later step). Each token's result is as in the full pass
    up to float rounding (a matrix product rounds by its row count)."""

    def __init__(self, parts: list[tuple]):
        self.shapes = [tuple(p[0].shape) for p in parts]
        self.sizes = [rows * n for rows, n in self.shapes]
        self.active = [active_of(p) for p in parts]
        self.counts = [size if a is None else len(a) for size, a in zip(self.sizes, self.active)]

    def flat(self, parts: list[tuple], index: int) -> torch.Tensor:
        """Entry ``index`` (token ids, positions) of every part's active tokens, concatenated."""
        pieces = [p[index].reshape(-1) if a is None else p[index].reshape(-1).index_select(0, a) for p, a in zip(parts, self.active)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def unpack(self, part: int, x: torch.Tensor) -> torch.Tensor:
        """Part ``part``'s active tokens' ``(count, C)`` -> all its tokens' ``(size, C)``."""
        return spread(x, self.active[part], self.sizes[part])

    def pack(self, part: int, x: torch.Tensor) -> torch.Tensor:
        """All of part ``part``'s tokens' ``(size, C)`` -> its active tokens'."""
        active = self.active[part]
        return x if active is None else x.index_select(0, active)

    def outputs(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """``(active tokens, dim)`` final states -> each part's ``(rows, n, dim)`` (zeros for the
        tokens it did not compute)."""
        pieces = hidden.split(self.counts) if len(self.counts) > 1 else (hidden,)
        return [self.unpack(i, h).view(rows, n, -1) for i, (h, (rows, n)) in enumerate(zip(pieces, self.shapes))]
