"""Attention weights for the searches that read them (GNMT's coverage penalty reads the
decoder's cross-attention, OPERA the decoder's self-attention).

A state started with ``attention="cross"`` or ``"self"`` records, after every forward, the
attention of each row's newest query in every layer: ``state.extra["attention"]`` is
``(rows, layers, heads, keys)`` float32. transformers' fused kernels (SDPA, flash) return no
weights, so those forwards run the model's eager attention: the same function written out,
equal to the fused result to float rounding, and slower (on this CPU ~1.2-2x a step, measured
in ``bench/bench_objectives.py``). Only the states that record pay it: they decode in a
state of their own, never merged with other requests' rows, and skip the lean step.
"""

from __future__ import annotations

import contextlib

import torch

KINDS = ("cross", "self")


def refusal(model, is_encoder_decoder: bool, kind: str) -> str | None:
    """Why ``model`` cannot record ``kind`` attention, or None if it can."""
    if kind == "cross" and not is_encoder_decoder:
        return f"an encoder-decoder model (cross-attention); {type(model).__name__} is decoder-only"
    if not hasattr(model, "set_attn_implementation"):
        return f"a transformers model that can switch to eager attention; {type(model).__name__} cannot"
    return None


@contextlib.contextmanager
def eager(model):
    """Run ``model`` with eager attention inside the block (its own implementation after)."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def last_queries(output, kind: str, is_encoder_decoder: bool) -> torch.Tensor:
    """``(rows, layers, heads, keys)``: every layer's attention of each row's last query."""
    if kind == "cross":
        maps = output.cross_attentions
    else:
        maps = output.decoder_attentions if is_encoder_decoder else output.attentions
    if not maps:
        raise RuntimeError(f"the model returned no {kind}-attention weights")
    return torch.stack([m[:, :, -1, :] for m in maps], 1).float()
