"""The output projection computed weight first, for large vocabularies on the CPU.

Subtle: on the CPU, ``x @ W.T`` for a few rows against a large (vocab, dim) output matrix lets
the BLAS pack the whole weight on every call; ``(W @ x.T).T`` streams it instead, ~1.7x faster
at 8 rows x 50k vocab (``python bench/bench_engine.py`` shows the end-to-end effect). Used for
4..32 rows (below, gemv is as fast; above, the packing pays off) and only for a float32
``nn.Linear`` head of at least 4M entries, where it matters. A fixed rule rather than a
run-time timing, so that results are reproducible bit for bit.
"""

from __future__ import annotations

import torch

ROWS = (4, 32)
MIN_ENTRIES = 4 * 1024 * 1024


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
    return head is not None and ROWS[0] <= rows <= ROWS[1]


def weight_first_linear(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` computed as ``(W @ hidden.T).T`` (same values up to float rounding)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.mm(head.weight, flat.t()).t().contiguous()  # row-major, as the engine's reductions want
    if head.bias is not None:
        out = out + head.bias
    return out.reshape(*hidden.shape[:-1], out.shape[-1])
