"""What every lean step shares (:mod:`decodekit.model.fast_llama`,
:mod:`decodekit.model.fast_gpt2`): when it still reproduces the model, and the attention kernel
for a step or a block over the preallocated cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _module

from decodekit.model import attention

_global_hooks = (_module._global_forward_hooks, _module._global_forward_pre_hooks)


class LeanStep:
    """Base of the lean steps: subclasses set ``embed`` (the input embedding weight),
    ``modules`` (the model's modules) and ``scale`` (the attention scale)."""

    embed: torch.Tensor
    modules: list[torch.nn.Module]
    scale: float

    def usable(self) -> bool:
        """Whether the step still reproduces the model: weights float32 on the CPU, and no
        forward hook registered since :meth:`build` (hooks must see the model's own calls)."""
        return (
            self.embed.dtype == torch.float32
            and self.embed.device.type == "cpu"
            and not (_global_hooks[0] or _global_hooks[1])
            and not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)
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
