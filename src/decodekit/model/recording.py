"""Model internals for the searches that read them: attention weights (GNMT's coverage penalty
reads the decoder's cross-attention, OPERA the decoder's self-attention) and hidden states
(contrastive search compares a candidate's last hidden state with the context's).

A state started with ``attention="cross"``, ``"self"`` or ``"hidden"`` records after every
forward, for each row's newest position:

- ``"cross"``/``"self"``: ``state.extra["attention"]``, ``(rows, layers, heads, keys)``
  float32, every layer's attention of that query. transformers' fused kernels (SDPA, flash)
  return no weights, so those forwards run the model's eager attention: the same function
  written out, equal to the fused result to float rounding, and slower (measured in
  ``bench/bench_objectives.py``).
- ``"hidden"``: ``state.extra["hidden"]``, ``(rows, layers + 1, dim)`` float32, the embedding
  output and every layer's output (the decoder's, for an encoder-decoder model), as
  transformers' ``output_hidden_states`` returns them; the prefill also records
  ``state.extra["prompt_hidden"]``, ``(rows, positions, dim)``, the last of them at every
  prompt position (the decoder start for an encoder-decoder model).

Only the states that record pay for it: they decode in a state of their own, never merged
with other requests' rows, and skip the lean step.
"""

from __future__ import annotations

import contextlib

import torch

KINDS = ("cross", "self", "hidden")


def refusal(model, is_encoder_decoder: bool, kind: str) -> str | None:
    """Why ``model`` cannot record ``kind``, or None if it can."""
    if kind == "cross" and not is_encoder_decoder:
        return f"an encoder-decoder model (cross-attention); {type(model).__name__} is decoder-only"
    if kind != "hidden" and not hasattr(model, "set_attn_implementation"):
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


def forward(model, kind: str, inputs: dict, is_encoder_decoder: bool, extra: dict):
    """Run ``model(**inputs)`` recording ``kind`` into ``extra``; returns the model output."""
    if kind == "hidden":
        out = model(**inputs, output_hidden_states=True)
        states = out.decoder_hidden_states if is_encoder_decoder else out.hidden_states
        extra["hidden"] = torch.stack([h[:, -1] for h in states], 1).float()
        if "prompt_hidden" not in extra:
            extra["prompt_hidden"] = states[-1].float()
        return out
    with eager(model):
        out = model(**inputs, output_attentions=True)
    extra["attention"] = last_queries(out, kind, is_encoder_decoder)
    return out


def last_queries(output, kind: str, is_encoder_decoder: bool) -> torch.Tensor:
    """``(rows, layers, heads, keys)``: every layer's attention of each row's last query."""
    if kind == "cross":
        maps = output.cross_attentions
    else:
        maps = output.decoder_attentions if is_encoder_decoder else output.attentions
    if not maps:
        raise RuntimeError(f"the model returned no {kind}-attention weights")
    return torch.stack([m[:, :, -1, :] for m in maps], 1).float()
