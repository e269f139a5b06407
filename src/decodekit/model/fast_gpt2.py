"""A lean decoding step for GPT-2 models (``GPT2LMHeadModel``).

The same function as the model's forward, from the model's own tensors (nothing copied), as
plain tensor operations: token + learned position embeddings, per block LayerNorm, the fused
query/key/value projection (``Conv1D``: one ``addmm``), the cache write, one attention kernel
(the shared-prefix one when rows share a long prompt), the output projection, LayerNorm, the MLP
with GPT-2's tanh GELU written as transformers writes it, so results match bit for bit on the
CPU. It covers exactly what :meth:`GPT2Step.build` checks (float32 weights, ``gelu_new``, the
default attention scaling, no cross-attention); anything else goes through the model's forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from decodekit.model.cache import PreallocatedCache
from decodekit.model.layout import Projections
from decodekit.model.lean import LeanStep, Packing
from decodekit.model.native_steps import NativeGPT2Step

_BLOCK = {"ln_1", "attn", "ln_2", "mlp"}
_ATTENTION = {"c_attn", "c_proj", "attn_dropout", "resid_dropout"}
_MLP = {"c_fc", "c_proj", "act", "dropout"}
_GELU = math.sqrt(2.0 / math.pi)


@dataclass(frozen=True)
class _Block:
    ln1: torch.nn.LayerNorm
    qkv: torch.nn.Module  # Conv1D: y = x @ weight + bias
    proj: torch.nn.Module
    ln2: torch.nn.LayerNorm
    fc: torch.nn.Module
    out: torch.nn.Module


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' ``NewGELUActivation``, the same operations in the same order."""
    return 0.5 * x * (1.0 + torch.tanh(_GELU * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Step(LeanStep):
    """Decoding forward (a token, a block of draft tokens, or a prompt) of a supported GPT-2
    model over a :class:`PreallocatedCache`; the same interface as
    :class:`~decodekit.model.fast_llama.LlamaStep`."""

    def __init__(self, model: torch.nn.Module):
        base, config = model.transformer, model.config
        self.model = model
        self.embed, self.position_table = base.wte.weight, base.wpe.weight
        self.heads = int(config.n_head)
        self.dim = int(config.n_embd)
        self.head_dim = self.dim // self.heads
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.blocks = [_Block(b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj) for b in base.h]
        self.final = base.ln_f
        self.modules = list(model.modules())
        self.head = Projections([model.lm_head])  # the output layer for few-row steps
        self.native = NativeGPT2Step.build(self)  # one-token steps in one kernel call, where built

    @classmethod
    def build(cls, model: torch.nn.Module) -> GPT2Step | None:
        """A step for ``model`` if it is a configuration this step reproduces, else None."""
        config = model.config
        heterogeneous = getattr(config, "is_heterogeneous", False)  # layers of their own sizes or windows
        if heterogeneous or type(model).__name__ != "GPT2LMHeadModel" or config.model_type != "gpt2":
            return None
        try:
            supported = all(cls._checks(model, config))
        except AttributeError:  # a variant without the parts this step reads
            return None
        if not supported:
            return None
        step = cls(model)
        return step if step.usable() else None

    @staticmethod
    def _checks(model, config) -> tuple[bool, ...]:
        base = model.transformer
        norms = [base.ln_f] + [norm for b in base.h for norm in (b.ln_1, b.ln_2)]
        return (
            config.activation_function == "gelu_new",
            not config.scale_attn_by_inverse_layer_idx,
            not config.reorder_and_upcast_attn,
            not getattr(config, "add_cross_attention", False),
            config.n_embd % config.n_head == 0,
            getattr(config, "_attn_implementation", None) in ("sdpa", "eager"),
            all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters()),
            all(type(n) is torch.nn.LayerNorm and n.eps == config.layer_norm_epsilon and n.elementwise_affine and n.bias is not None for n in norms),
            type(model.lm_head) is torch.nn.Linear,
            all(
                set(dict(b.named_children())) == _BLOCK
                and set(dict(b.attn.named_children())) == _ATTENTION
                and set(dict(b.mlp.named_children())) == _MLP
                and type(b.mlp.act).__name__ == "NewGELUActivation"
                and all(type(m).__name__ == "Conv1D" for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))
                for b in base.h
            ),
        )

    def usable(self) -> bool:
        """As :meth:`LeanStep.usable`, and the model is in eval mode (no dropout)."""
        return not self.model.training and super().usable()

    @torch.inference_mode()
    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: PreallocatedCache,
        mask: torch.Tensor | None,
        plan: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Feed ``tokens`` at ``positions`` (both ``(rows, n)``) after each row's cache; as
        :meth:`LlamaStep.__call__ <decodekit.model.fast_llama.LlamaStep.__call__>`. Returns the
        final normed hidden states ``(rows, n, dim)``."""
        return self.parts([(tokens, positions, cache, mask, plan)])[0]

    @torch.inference_mode()
    def parts(self, parts: list[tuple]) -> list[torch.Tensor]:
        """Several batches with caches of their own in one pass; as :meth:`LlamaStep.parts
        <decodekit.model.fast_llama.LlamaStep.parts>`."""
        if len(parts) == 1 and self.native is not None:
            hidden = self.native(parts[0])
            if hidden is not None:
                return [hidden]
        D, H, d = self.dim, self.heads, self.head_dim
        packing = Packing(parts)
        hidden = F.embedding(packing.flat(parts, 0), self.embed) + F.embedding(packing.flat(parts, 1), self.position_table)  # (active tokens, D)
        for index, block in enumerate(self.blocks):
            x = F.layer_norm(hidden, (D,), block.ln1.weight, block.ln1.bias, block.ln1.eps)
            qkv = torch.addmm(block.qkv.bias, x, block.qkv.weight)
            outs, at = [], 0
            for part, ((_, _, cache, mask, plan, *_), (rows, n), size, count) in enumerate(zip(parts, packing.shapes, packing.sizes, packing.counts)):
                q, k, v = packing.unpack(part, qkv[at : at + count]).view(rows, n, 3 * D).split(D, dim=2)
                at += count
                q, k, v = (t.view(rows, n, H, d).transpose(1, 2) for t in (q, k, v))
                keys, values = cache.layers[index].update(k, v)
                outs.append(packing.pack(part, self._attend(q, keys, values, mask, plan).reshape(size, D)))
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            hidden = torch.addmm(block.proj.bias, out, block.proj.weight) + hidden
            x = F.layer_norm(hidden, (D,), block.ln2.weight, block.ln2.bias, block.ln2.eps)
            inner = _gelu_new(torch.addmm(block.fc.bias, x, block.fc.weight))
            hidden = hidden + torch.addmm(block.out.bias, inner, block.out.weight)
        hidden = F.layer_norm(hidden, (D,), self.final.weight, self.final.bias, self.final.eps)
        return packing.outputs(hidden)
