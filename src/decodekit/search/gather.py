"""Gathers over beam-search state: a beam search keeps its per-beam tensors with the prompt
first and the beam (or, for Diverse Beam Search, the group then the beam) next, and every
step reorders or picks along that beam dimension with per-prompt indices."""

from __future__ import annotations

import torch


def take_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along dim 1 of ``(batch, n, ...)`` with ``(batch, m)`` indices."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def take_group_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along dim 2 of ``(batch, groups, n, ...)`` with ``(batch, groups, m)`` indices."""
    trailing = tensor.shape[3:]
    if trailing:  # subtle: gather with an expanded index is ~3x cheaper than take_along_dim
        index = index.view(*index.shape, *(1,) * len(trailing)).expand(*index.shape, *trailing)
    return tensor.gather(2, index)


def group_rows(tensor: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``(batch, G, K, ...)`` -> ``(batch, n, ...)``: entries ``order`` (``(batch, n)``) of G*K."""
    flat = tensor.reshape(tensor.shape[0], -1, *tensor.shape[3:])
    return torch.take_along_dim(flat, order.view(*order.shape, *([1] * (flat.dim() - 2))), dim=1)
