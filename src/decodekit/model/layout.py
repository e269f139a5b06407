"""Linear layers' weights laid out for few-row products on the CPU.

``torch.nn.Linear`` keeps its weight ``(out, in)`` and computes ``x @ W.T``. With a handful of
rows (a decoding step: one row per sequence) the product is bound by streaming the weight, and
on this project's reference CPU MKL streams a widening weight (out > in: a gated MLP's gate and
up projections, the output layer) faster from an ``(in, out)`` copy, while narrowing ones are
no faster (``python bench/bench_gemv.py`` times the layouts). So a lean step keeps such copies
of its widening weights for steps of at most :data:`ROWS` rows, when the copies are small
(:data:`BUDGET`): they cost that memory again.

A copy is remade when its weight changes: a different tensor on the module, or an in-place
update of the same one (its version counter moves), so a model edited after loading is still
the model decoded. The products equal ``F.linear``'s up to float rounding.

Where decodekit's own kernels are built and the CPU runs them (:mod:`decodekit.native`), they
take the products of up to :data:`decodekit.native.ROWS` rows from the modules' own weights,
faster than either layout through the BLAS, and no copies are made.

Larger products (a prefill, a step of many rows) go through oneDNN instead of MKL where the CPU
has AVX-512 (:data:`ONEDNN`): on the AMD CPU measured oneDNN ran at more than AVX2's peak rate
and MKL well below it, and oneDNN took about half MKL's time from 33 rows on (``python bench/bench_gemv.py --rows 64
512`` shows both). Elsewhere they stay with ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decodekit import native

# at most this many bytes of weights are copied (the embedded models: 24 MB; a 110M-parameter
# Llama: 340 MB); larger models' steps read the modules' own weights
BUDGET = 512 << 20
ROWS = 4  # the copies serve products of at most this many rows
# larger products through oneDNN (torch's mkldnn linear) on CPUs with AVX-512; the capability
# torch dispatches with (``ATEN_CPU_CAPABILITY`` lowers it), read once
ONEDNN = torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability() == "AVX512"


class Projections:
    """``linears``' weights as ``(in, out)`` copies (or the modules' own, over the budget);
    :meth:`refresh` once per forward, then ``self(x, index)`` is ``linears[index](x)``."""

    def __init__(self, linears: list[torch.nn.Linear], budget: int = BUDGET):
        self.linears = list(linears)
        # only widening products gain from the (in, out) layout: narrowing ones lose
        self.wide = [m.weight.shape[0] > m.weight.shape[1] for m in self.linears]
        size = sum(m.weight.numel() * m.weight.element_size() for m, wide in zip(self.linears, self.wide) if wide)
        self.native = native.available()
        self.copied = not self.native and size <= budget and all(m.weight.device.type == "cpu" for m in self.linears)
        self.size = size if self.copied else 0  # bytes of the copies (what is left of a budget: budget - size)
        self._copies: list[tuple[torch.Tensor, int, torch.Tensor] | None] = [None] * len(self.linears)

    def refresh(self) -> None:
        """Remake the copy of any weight replaced or changed in place since the last call."""
        if not self.copied:
            return
        for index, module in enumerate(self.linears):
            if not self.wide[index]:
                continue
            weight, entry = module.weight, self._copies[index]
            if entry is None or entry[0] is not weight or entry[1] != weight._version:
                self._copies[index] = (weight, weight._version, weight.detach().t().contiguous())

    @property
    def rows(self) -> int:
        """The most rows for which a product is faster here than through the module."""
        return native.ROWS if self.native else ROWS if self.copied else 0

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """``linears[index]`` applied to ``x`` of shape ``(rows, in)``."""
        module = self.linears[index]
        if self.native:
            out = native.linear(x, module.weight, module.bias)
            if out is not None:
                return out
        entry = self._copies[index] if self.copied and x.shape[0] <= ROWS else None
        if entry is None:
            if ONEDNN and x.shape[0] > native.ROWS and _onednn_ready(x, module):
                return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")
            return F.linear(x, module.weight, module.bias)
        if module.bias is None:
            return x @ entry[2]
        return torch.addmm(module.bias, x, entry[2])


def _onednn_ready(x: torch.Tensor, module: torch.nn.Linear) -> bool:
    """Whether oneDNN's linear takes this product as ``F.linear`` would."""
    bias = module.bias
    return x.dim() == 2 and native.plain(x, module.weight) and (bias is None or native.plain(bias))
