"""Classifier-free guidance (Sanchez et al. 2023, "Stay on topic with Classifier-Free
Guidance"), as transformers' ``guidance_scale`` / ``negative_prompt_ids``: every row also
decodes an *unconditional* twin, started from the negative prompt (or, without one, the
prompt's last token) and continued with the row's tokens; the row's scores become

    lp_u + guidance_scale * (lp_c - lp_u)

with ``lp_c`` the log-softmax of the row's scores and ``lp_u`` the twin's next-token
log-probs. The twins live in a model state of the processor's own, reordered with the rows
(beams included) and advanced by one forward per step, as transformers' unbatched processor
does. Applied before every other processor, as in transformers.
"""

from __future__ import annotations

import torch


class Guidance:
    """The guidance processor of one group's rows. ``model``: the decoding model (its
    ``start``/``advance``); ``unconditional``: each row's unconditional prompt (after fan-out);
    ``max_new_tokens``: the rows' budget."""

    changes_argmax = True

    def __init__(self, model, scale: float, unconditional: list[list[int]], max_new_tokens: int):
        self.model, self.scale = model, scale
        self.unconditional, self.max_new_tokens = unconditional, max_new_tokens
        self.state = None

    def reset(self, rows: int) -> None:
        if rows != len(self.unconditional):
            raise AssertionError(f"guidance: {rows} rows for {len(self.unconditional)} unconditional prompts")
        self.state = self.model.start(self.unconditional, self.max_new_tokens)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        conditional = scores.log_softmax(-1)
        unconditional = self.state.logits.to(scores.dtype).log_softmax(-1)
        return self.scale * (conditional - unconditional) + unconditional

    def advance(self, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        self.model.advance(self.state, parents, tokens)
