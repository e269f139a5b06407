"""DoLa: decoding by contrasting the final layer's next-token distribution with an earlier
("premature") layer's.

Chuang et al. (2024), "DoLa: Decoding by Contrasting Layers Improves Factuality in Large
Language Models", as transformers 4.x's ``generate(dola_layers=...)`` computed it (removed from
its core in transformers 5), for decoder-only models:

- the candidate premature layers: ``"low"`` / ``"high"`` (the lower / upper half of the
  layers, every second one; the embedding output counts as layer 0 and is skipped when the
  output layer shares its weights) or given layer indices; their logits are the output layer
  applied to their hidden states;
- with several candidates, the premature layer is the one whose distribution is furthest from
  the final one by Jensen-Shannon divergence (eq. 4);
- the next-token scores are ``log p_final - log p_premature`` over the tokens whose final
  probability is at least ``relative_top`` times the largest (eq. 2-3); the others are ruled
  out. Processors (e.g. a repetition penalty, which the paper recommends) then apply to
  these scores, and the token is their argmax (or a sample, with ``sampler``).

Deviation, stated: transformers averages the divergence over the whole batch and picks one
layer for every row, so a row's output depends on its neighbours; decodekit picks the layer
per row (identical for a batch of one), so batch = single holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.search.base import SearchContext
from decodekit.search.sampling import RowSearch, Sampling

LAYER_SETS = ("low", "high")


def candidate_layers(layers: str | tuple[int, ...], final: int, tied: bool) -> list[int]:
    """The premature layers DoLa may contrast with, for a model of ``final`` layers."""
    start = 0 if not tied else (2 if final > 2 else 1 if final == 2 else 0)
    if layers == "low":
        if start == final // 2:
            return [start]
        return list(range(start, final // 2, 2)) if final <= 40 else list(range(start, 20, 2))
    if layers == "high":
        return list(range(final // 2, final, 2)) if final <= 40 else list(range(final - 20, final, 2))
    return [i for i in layers if i < final]


def contrast(final: torch.Tensor, premature: torch.Tensor, relative_top: float) -> torch.Tensor:
    """``(rows, V)`` final and ``(layers, rows, V)`` premature logits -> ``(rows, V)`` DoLa
    scores, each row contrasted with its own most divergent premature layer."""
    if premature.shape[0] > 1:
        mature, early = final.softmax(-1), premature.softmax(-1)
        middle = 0.5 * (mature[None] + early)
        kl_mature = torch.nn.functional.kl_div(final.log_softmax(-1)[None], middle, reduction="none").mean(-1)
        kl_early = torch.nn.functional.kl_div(premature.log_softmax(-1), middle, reduction="none").mean(-1)
        choice = (0.5 * (kl_mature + kl_early)).argmax(0)  # (rows,): per row, not per batch
        base = premature[choice, torch.arange(final.shape[0], device=final.device)]
    else:
        base = premature[0]
    final_lp, base_lp = final.log_softmax(-1), base.log_softmax(-1)
    threshold = final_lp.max(-1, keepdim=True).values + math.log(relative_top)
    threshold = torch.minimum(final_lp.max(-1, keepdim=True).values, threshold)  # at least one token kept
    kept = final_lp >= threshold
    return torch.where(kept, final_lp - base_lp.masked_fill(~kept, -1e-3), torch.full_like(final_lp, float("-inf")))


@dataclass(frozen=True)
class DoLa:
    """``layers``: ``"high"``, ``"low"`` or premature layer indices; ``relative_top``: the
    plausibility cut (tokens below that fraction of the top probability are ruled out);
    ``sampler``: sample from the contrasted scores with these warpers (None: greedy)."""

    name: ClassVar[str] = "dola"
    layers: str | tuple[int, ...] = "high"
    relative_top: float = 0.1
    sampler: Sampling | None = None

    @property
    def premature(self) -> str | tuple[int, ...]:
        """``layers`` resolved: ``"low"``, ``"high"`` or layer indices (a string of
        comma-separated indices, as the command line gives them, becomes a tuple)."""
        if isinstance(self.layers, str) and self.layers not in LAYER_SETS and all(p.strip().isdigit() for p in self.layers.split(",")):
            return tuple(int(p) for p in self.layers.split(","))
        return self.layers

    def validate(self) -> None:
        layers = self.premature
        if isinstance(layers, str):
            v.choice("layers", layers, LAYER_SETS)
        elif not isinstance(layers, tuple | list) or not layers or not all(v.is_integer(i) and 0 <= i < 4096 for i in layers):
            raise ConfigError("layers", self.layers, "'low', 'high' or a non-empty list of layer indices >= 0 (on the command line: 0,2,4)")
        v.number("relative_top", self.relative_top, 0.0, 1.0, low_open=True)
        if self.sampler is not None:
            if not isinstance(self.sampler, Sampling):
                raise ConfigError("sampler", self.sampler, "a decodekit.Sampling config or None (greedy)")
            self.sampler.validate()
            for name, ok in (("n", self.sampler.n == 1), ("speculative", self.sampler.speculative is None), ("xtc_probability", not self.sampler.xtc_probability), ("mirostat_tau", not self.sampler.mirostat_tau)):
                if not ok:
                    raise ConfigError(f"sampler.{name}", getattr(self.sampler, name), "its default with DoLa")

    def begin(self, context: SearchContext) -> DoLaRun:
        return DoLaRun(self, context)


class DoLaRun(RowSearch):
    """Greedy or sampled rows over DoLa's contrasted scores."""

    attention = "hidden"
    attention_field = "strategy"

    def __init__(self, config: DoLa, context: SearchContext):
        super().__init__(context, width=1, sampler=config.sampler)
        self.config = config
        self.layers: list[int] | None = None

    def refusal(self, model) -> str | None:
        if model.is_encoder_decoder:
            return "a decoder-only model (DoLa contrasts a decoder-only model's layers, as transformers did)"
        if self.context.output_head is None:
            return "a transformers model whose output layer decodekit can apply to earlier layers"
        final = getattr(model, "layer_count", None)
        if final is not None and not candidate_layers(self.config.premature, final, self.context.tied_embeddings):
            raise ConfigError("layers", self.config.layers, f"premature layers below the model's {final} layers")
        return None

    def attend(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(rows, layers + 1, dim)`` hidden states of this step's forward -> DoLa scores."""
        if self.layers is None:
            final = hidden.shape[1] - 1
            self.layers = candidate_layers(self.config.premature, final, self.context.tied_embeddings)
            if not self.layers:
                raise ConfigError("layers", self.config.layers, f"premature layers below the model's {final} layers")
        premature = torch.stack([self.context.output_head(hidden[:, i]) for i in self.layers])
        return contrast(logits.float(), premature.float(), self.config.relative_top)
