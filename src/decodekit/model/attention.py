"""Shared-prefix attention: the rows of one prompt read the prompt's keys/values once.

Beam search (and ``n`` samples) keeps K rows per prompt whose prompt region of the cache is
identical. A plain attention kernel reads that region once per row, K times the memory traffic
of what it needs, and at long prompts that traffic is most of a decoding step. For a one-token
step this function splits the attention in two (as cascade attention / Hydragen do):

- prefix: the K rows' queries, stacked, against ONE copy of the prompt keys/values;
- suffix: each row's query against its own generated keys/values;

and merges the two partial softmaxes exactly through their log-sum-exps:
``out = lerp(out_suffix, out_prefix, sigmoid(lse_prefix - lse_suffix))``.

It is registered with transformers' attention interface under :data:`NAME` and is active only
inside :func:`shared_prefix` (which the transformers adapter opens around a decoding step of a
model that dispatches through that interface). Anything else (prefill, speculative blocks,
softcapping, attention sinks, sliding windows, dropout, no open plan) is passed to transformers' own SDPA
function unchanged, so the model computes exactly what it would without decodekit.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "decodekit_shared_prefix"

# Subtle: below this many prompt positions the two kernel calls and the merge cost more than
# re-reading the prompt per row; the engine bench (prompts 32 and 512) shows both sides of it.
MIN_PREFIX = 256

_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_plan: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("decodekit_shared_prefix", default=None)
# Subtle: a sliding window can mask a prompt's whole prefix, which the split does not handle
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias", "sliding_window")


def available(model: torch.nn.Module) -> bool:
    """Whether ``model`` can use the shared-prefix path: a CPU model that dispatches its
    attention through transformers' interface and uses SDPA (the default)."""
    config = model.config
    return (
        _flash is not None
        and getattr(model, "_supports_attention_backend", False)
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and next(model.parameters()).device.type == "cpu"
    )


@contextlib.contextmanager
def shared_prefix(model: torch.nn.Module, group: int, prefix: int) -> Iterator[None]:
    """While open, ``model``'s one-token attention treats rows ``[g*group, (g+1)*group)`` as
    sharing cache positions ``[0, prefix)``. The caller guarantees they do."""
    config = model.config
    config._attn_implementation = NAME
    token = _plan.set((group, prefix))
    try:
        yield
    finally:
        _plan.reset(token)
        config._attn_implementation = "sdpa"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    plan = _plan.get()
    usable = (
        plan is not None
        and query.shape[2] == 1
        and not dropout
        and not any(kwargs.get(name) is not None for name in _UNSUPPORTED)
        and query.dtype == key.dtype == value.dtype
        and can_share(key.shape[2], query.shape[0], attention_mask, plan)
    )
    if not usable:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return attend_shared(query, key, value, attention_mask, scale, *plan), None


def can_share(length: int, rows: int, attention_mask: torch.Tensor | None, plan: tuple[int, int]) -> bool:
    """Whether :func:`attend_shared` applies: generated positions exist after the prefix, the
    rows split into whole groups, and the mask (if any) is boolean."""
    group, prefix = plan
    return (
        _flash is not None
        and length > prefix
        and rows % group == 0
        and (attention_mask is None or attention_mask.dtype == torch.bool)
    )


def attend_shared(query, key, value, attention_mask, scale: float, group: int, prefix: int) -> torch.Tensor:
    """One-token attention of rows that share their first ``prefix`` cache positions in groups of
    ``group`` consecutive rows. ``query``: ``(rows, heads, 1, dim)``; ``key``/``value``:
    ``(rows, kv_heads, length, dim)``; ``attention_mask``: None or bool ``(rows, 1, 1, length)``.
    Returns ``(rows, 1, heads, dim)``."""
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    per_kv = heads // kv_heads
    prompts = rows // group
    q = query.reshape(rows, kv_heads, per_kv, dim)  # a view: one query position
    # prefix: every row of a prompt as extra query positions against the prompt's one copy
    q_prefix = q.view(prompts, group, kv_heads, per_kv, dim).transpose(1, 2).reshape(prompts, kv_heads, group * per_kv, dim)
    mask_prefix = mask_suffix = None
    if attention_mask is not None:
        mask_prefix = _additive(attention_mask[::group, :, :, :prefix], query.dtype)
        mask_suffix = _additive(attention_mask[:, :, :, prefix:], query.dtype)
    out_p, lse_p = _flash(
        q_prefix, key[::group, :, :prefix], value[::group, :, :prefix], attn_mask=mask_prefix, scale=scale
    )[:2]
    out_s, lse_s = _flash(q, key[:, :, prefix:], value[:, :, prefix:], attn_mask=mask_suffix, scale=scale)[:2]
    # merge in row order (prompt, row, kv head, query head, dim)
    out_p = out_p.view(prompts, kv_heads, group, per_kv, dim).transpose(1, 2)
    lse_p = lse_p.view(prompts, kv_heads, group, per_kv).transpose(1, 2)
    out_s = out_s.view(prompts, group, kv_heads, per_kv, dim)
    weight = torch.sigmoid(lse_p - lse_s.view(prompts, group, kv_heads, per_kv)).unsqueeze(-1)
    out = torch.lerp(out_s, out_p, weight)
    return out.reshape(rows, 1, heads, dim)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
