"""A lean decoding step for Llama-family transformers models.

A decoding step of a small model on the CPU is dominated by framework overhead, not arithmetic:
module calls, keyword plumbing, mask and rotary construction at every forward. This step
computes the same function from the same parameters (the model's own modules and tensors,
nothing copied) as plain tensor operations: ``F.rms_norm``, the projections, rotary embedding
from a cached cos/sin table, the cache write, one attention kernel (the shared-prefix one when
rows share a long prompt), the gated MLP.

It covers exactly the configurations it checks for (see :func:`LlamaStep.build`): Llama, Qwen2,
Qwen3 and Mistral causal LMs with float32 weights, SiLU, default RoPE, no sliding window; anything
else goes through the model's own forward. It runs prefill (decoder-only, no recorded
attention), one-token steps and speculative blocks.
Results equal the model's own forward up to float rounding; the parity tests compare both
against ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from decodekit.model.cache import PreallocatedCache
from decodekit.model.layout import BUDGET, Projections
from decodekit.model.lean import LeanStep, Packing
from decodekit.model.native_steps import NativeLlamaStep

_ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"}
# the submodules each part may have: a model with anything else (a variant) is not reproduced
_PARTS = {
    "layer": {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"},
    "attention": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "attention_qk_norm": {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"},  # Qwen3
    "mlp": {"gate_proj", "up_proj", "down_proj", "act_fn"},
}


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    post_norm: torch.Tensor
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear
    q_norm: torch.Tensor | None  # per-head RMSNorm of queries/keys before RoPE (Qwen3)
    k_norm: torch.Tensor | None


def _norms(base: torch.nn.Module) -> list[torch.nn.Module]:
    norms = [base.norm]
    for layer in base.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        norms += [getattr(layer.self_attn, name) for name in ("q_norm", "k_norm") if hasattr(layer.self_attn, name)]
    return norms


class LlamaStep(LeanStep):
    """Decoding forward (a token, or a block of draft tokens) of a supported Llama-family model
    over a :class:`PreallocatedCache`."""

    def __init__(self, model: torch.nn.Module):
        base, config = model.model, model.config
        self.embed = base.embed_tokens.weight
        self.eps = float(config.rms_norm_eps)
        self.final_norm = base.norm.weight
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = self.head_dim**-0.5
        self.inv_freq = base.rotary_emb.inv_freq
        self.attention_scaling = float(getattr(base.rotary_emb, "attention_scaling", 1.0))
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.self_attn.o_proj,
                layer.post_attention_layernorm.weight,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
                layer.mlp.down_proj,
                getattr(getattr(layer.self_attn, "q_norm", None), "weight", None),
                getattr(getattr(layer.self_attn, "k_norm", None), "weight", None),
            )
            for layer in base.layers
        ]
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None
        self.modules = list(model.modules())
        # each layer's q, k, v, o, gate, up, down, in that order (index 7 * layer + j)
        self.projections = Projections([m for x in self.layers for m in (x.q, x.k, x.v, x.o, x.gate, x.up, x.down)])
        self.head = Projections([model.lm_head], budget=BUDGET - self.projections.size)  # one budget for both
        self.native = NativeLlamaStep.build(self)  # one-token steps in one kernel call, where built

    @classmethod
    def build(cls, model: torch.nn.Module) -> LlamaStep | None:
        """A step for ``model`` if it is a configuration this step reproduces, else None."""
        config = model.config
        heterogeneous = getattr(config, "is_heterogeneous", False)  # layers of their own sizes or windows
        if heterogeneous or type(model).__name__ not in _ARCHITECTURES or config.model_type not in ("llama", "qwen2", "qwen3", "mistral"):
            return None
        attention_parts = _PARTS["attention_qk_norm" if config.model_type == "qwen3" else "attention"]
        base = model.model
        try:
            supported = all(cls._checks(model, config, base, attention_parts))
        except AttributeError:  # a variant without the parts this step reads
            return None
        if not supported:
            return None
        step = cls(model)
        return step if step.usable() else None

    @staticmethod
    def _checks(model, config, base, attention_parts) -> tuple[bool, ...]:
        rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
        return (
            getattr(config, "hidden_act", None) == "silu",
            rope.get("rope_type", "default") == "default",
            not getattr(config, "use_sliding_window", False),
            config.model_type == "qwen2" or getattr(config, "sliding_window", None) is None,
            all(kind == "full_attention" for kind in (getattr(config, "layer_types", None) or ["full_attention"])),
            getattr(config, "pretraining_tp", 1) == 1,
            not getattr(config, "mlp_bias", False),
            getattr(config, "_attn_implementation", None) in ("sdpa", "eager"),
            all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters()),
            type(base.rotary_emb).__name__.endswith("RotaryEmbedding"),
            all(
                type(norm).__name__.endswith("RMSNorm") and norm.variance_epsilon == config.rms_norm_eps
                for norm in _norms(base)
            ),
            type(model.lm_head) is torch.nn.Linear,
            all(
                type(getattr(part, name)) is torch.nn.Linear
                for layer in base.layers
                for part, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")), (layer.mlp, ("gate_proj", "up_proj", "down_proj")))
                for name in names
            ),
            all(
                set(dict(layer.named_children())) == _PARTS["layer"]
                and set(dict(layer.self_attn.named_children())) == attention_parts
                and set(dict(layer.mlp.named_children())) == _PARTS["mlp"]
                for layer in base.layers
            ),
            2 * base.rotary_emb.inv_freq.numel() == (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads),
        )

    def _rotary(self, positions: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of ``positions`` (``(rows,)``), from a table grown to ``capacity`` positions."""
        if self._table is None or self._table[0].shape[0] < capacity:
            # the same arithmetic as transformers' rotary embedding, once per position
            if self._table is not None:
                capacity = max(capacity, 2 * self._table[0].shape[0])
            at = torch.arange(capacity, device=self.inv_freq.device, dtype=torch.int64)
            freqs = at[:, None].float() * self.inv_freq.float()[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self._table = (emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling)
        cos, sin = self._table
        return cos.index_select(0, positions), sin.index_select(0, positions)

    @torch.inference_mode()
    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: PreallocatedCache,
        mask: torch.Tensor | None,
        plan: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Feed ``tokens`` at ``positions`` (both ``(rows, n)``) after each row's cache.

        ``mask``: None (every cache slot and causal order within the block), or an SDPA mask
        broadcastable to ``(rows, 1, n, length + n)`` (bool: visible; float: additive).
        ``plan``: ``(group, prefix)`` for shared-prefix attention of one-token steps.
        Appends each layer's keys/values to the cache; returns the final normed hidden states
        ``(rows, n, dim)`` (the caller applies the output projection)."""
        return self.parts([(tokens, positions, cache, mask, plan)])[0]

    @torch.inference_mode()
    def parts(self, parts: list[tuple]) -> list[torch.Tensor]:
        """Several batches with caches of their own in one pass, each part a ``(tokens,
        positions, cache, mask, plan)`` of :meth:`__call__`: the projections, norms and MLP
        run once over every part's tokens, attention per part over its own cache (e.g. a
        one-token step of the running rows and the prefill of new prompts: one set of kernel
        calls instead of two); a part may name its ``active`` tokens as a sixth entry
        (:class:`~decodekit.model.lean.Packing`). Returns each part's hidden states."""
        if len(parts) == 1 and self.native is not None:
            hidden = self.native(parts[0])
            if hidden is not None:
                return [hidden]
        d, H, Hkv = self.head_dim, self.heads, self.kv_heads
        half = d // 2
        packing = Packing(parts)
        shapes, sizes, counts = packing.shapes, packing.sizes, packing.counts
        tables = []
        for (_, positions, *_), (rows, n) in zip(parts, shapes):
            cos, sin = self._rotary(positions.reshape(-1), int(positions.max()) + 1)
            tables.append((cos.view(rows, n, 1, d), sin.view(rows, n, 1, d)))  # broadcast over heads
        hidden = F.embedding(packing.flat(parts, 0), self.embed)  # (active tokens, D)
        linear = self.projections
        linear.refresh()
        for index, layer in enumerate(self.layers):
            at = 7 * index
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.input_norm, self.eps)
            q, k, v = linear(x, at), linear(x, at + 1), linear(x, at + 2)
            outs, first = [], 0
            for part, ((_, _, cache, mask, plan, *_), (rows, n), size, count, (cos, sin)) in enumerate(zip(parts, shapes, sizes, counts, tables)):
                qi = packing.unpack(part, q[first : first + count]).view(rows, n, H, d)
                ki = packing.unpack(part, k[first : first + count]).view(rows, n, Hkv, d)
                vi = packing.unpack(part, v[first : first + count]).view(rows, n, Hkv, d)
                first += count
                if layer.q_norm is not None:
                    qi = F.rms_norm(qi, (d,), layer.q_norm, self.eps)
                    ki = F.rms_norm(ki, (d,), layer.k_norm, self.eps)
                qi = qi * cos + torch.cat((-qi[..., half:], qi[..., :half]), -1) * sin
                ki = ki * cos + torch.cat((-ki[..., half:], ki[..., :half]), -1) * sin
                keys, values = cache.layers[index].update(ki.transpose(1, 2), vi.transpose(1, 2))
                outs.append(packing.pack(part, self._attend(qi.transpose(1, 2), keys, values, mask, plan).reshape(size, H * d)))
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            hidden = hidden + linear(out, at + 3)
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.post_norm, self.eps)
            hidden = hidden + linear(F.silu(linear(x, at + 4)) * linear(x, at + 5), at + 6)
        hidden = F.rms_norm(hidden, (hidden.shape[-1],), self.final_norm, self.eps)
        return packing.outputs(hidden)
