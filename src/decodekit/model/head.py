"""The output projection computed weight first, for large vocabularies on the CPU.

Subtle: on the CPU, ``x @ W.T`` for a handful of rows against a (vocab, dim) output matrix
lets the BLAS pack the whole weight on every call once the rows pass a small-matrix limit;
``(W @ x.T).T`` streams the weight instead. ``python bench/bench_head.py`` measures both: the
weight-first form wins at 16-32 rows from ~1M entries (6144 x 256: 0.5-0.6x the time) and, for
large heads (50257 x 256), already at 8 rows (0.6x); it loses at 1-4 rows and at 64. The rule
below follows that table. It is fixed rather than timed at run time, so that results are
reproducible bit for bit.
"""

from __future__ import annotations

import torch

MIN_ENTRIES = 1024 * 1024  # weight-first for 16..32 rows
LARGE_ENTRIES = 8 * 1024 * 1024  # ... and for 8..32 rows


def large_cpu_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """``model``'s output projection if the weight-first form applies to it, else None."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or "forward" in vars(head) or head._forward_hooks or head._forward_pre_hooks:
        return None
    weight = head.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.numel() < MIN_ENTRIES:
        return None
    return head


def applies(head: torch.nn.Linear | None, rows: int) -> bool:
    """Whether ``rows`` rows go through ``head`` (from :func:`large_cpu_head`) weight first."""
    if head is None or rows > 32:
        return False
    return rows >= 16 or (rows >= 8 and head.weight.numel() >= LARGE_ENTRIES)


def weight_first_linear(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` computed as ``(W @ hidden.T).T`` (same values up to float rounding)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.mm(head.weight, flat.t()).t().contiguous()  # row-major, as the engine's reductions want
    if head.bias is not None:
        out = out + head.bias
    return out.reshape(*hidden.shape[:-1], out.shape[-1])
