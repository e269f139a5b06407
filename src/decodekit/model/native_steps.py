"""The lean steps' one-token decoding steps in one call of decodekit's kernels
(:mod:`decodekit.native`): every layer's norms, projections, rotary embedding (Llama) or
learned positions (GPT-2), cache write, attention and MLP for every row, without a PyTorch
operation between them.

It serves exactly the steps the C kernel covers (one part: a token per row or a speculative
block, at most :data:`decodekit.native.STEP_TOKENS` tokens, every row computed, no
shared-prefix plan, the cache in its preallocated contiguous buffers); anything else (prefill,
fused admission passes) stays on the lean step's PyTorch path. Results equal
that path's up to float rounding (``tests/unit/test_native.py`` compares the two).
"""

from __future__ import annotations

import ctypes

import torch

from decodekit import native


class NativeStep:
    """:meth:`__call__` a lean step's part, or None where the kernel does not serve it.
    Subclasses set ``function`` (the kernel), ``dims``, ``scalars`` and :meth:`_tensors`."""

    function: str
    dims: ctypes.Array
    scalars: ctypes.Array

    def __init__(self, step):
        self.step = step
        self.lib = native.library()
        self.kernel = getattr(self.lib, self.function)
        self._weights: tuple[list[int], ctypes.Array] | None = None
        self._places: list[tuple[dict, str]] | None = None

    def _slots(self) -> list[tuple[dict, str]]:
        """Where each weight is read from, in the kernel's order: a ``(namespace, name)`` pair
        (a module's parameter or buffer dict, or an object's ``__dict__``, see :func:`_place`),
        so a parameter replaced on its module is seen at the next step; a value None is a
        pointer the kernel takes as absent."""
        raise NotImplementedError

    def _tensors(self) -> list[torch.Tensor | None]:
        """The weights in the kernel's order (None: a pointer the kernel takes as absent)."""
        if self._places is None:
            self._places = self._slots()
        return [space[name] for space, name in self._places]

    def _weight_array(self) -> ctypes.Array | None:
        """The C array of the step's weight pointers (remade when a tensor moved), or None
        where a weight is not one the kernel reads."""
        tensors = self._tensors()
        addresses = [0 if t is None else t.data_ptr() for t in tensors]
        if self._weights is not None and self._weights[0] == addresses:
            return self._weights[1]
        if not all(t is None or (t.dtype == torch.float32 and t.is_contiguous()) for t in tensors):
            return None
        self._weights = (addresses, (ctypes.c_void_p * len(addresses))(*addresses))
        return self._weights[1]

    def _prepare(self, positions: torch.Tensor) -> None:
        """Anything a step needs before the weights are read (the Llama rotary table)."""

    def __call__(self, part: tuple) -> torch.Tensor | None:
        """The final normed hidden states ``(rows, n, dim)`` of a step ``part`` (``(tokens,
        positions, cache, mask, plan)``: a token per row, or a speculative block of ``n``), the
        cache advanced by ``n`` slots; None (nothing done) where the kernel does not serve it."""
        if len(part) not in (5, 6):
            return None
        tokens, positions, cache, mask, plan = part[:5]
        rows, n = tokens.shape
        idle = _idle(part[5], rows, n) if len(part) == 6 else None
        if idle is False:
            return None
        layers = getattr(cache, "layers", None)
        if rows * n > native.STEP_TOKENS or plan is not None or not layers or len(layers) != self.dims[0]:
            return None
        length, capacity = layers[0].length, getattr(layers[0], "capacity", None)
        for layer in layers:
            if not getattr(layer, "is_initialized", False) or layer.length != length or layer.capacity != capacity:
                return None
            if layer._key_buffer is None or layer._key_buffer.shape[0] != rows:
                return None
        if mask is not None:
            mask = _visible(mask, rows, n, length + n)
            if mask is None:
                return None
        tokens, positions = tokens.contiguous(), positions.contiguous()
        if idle is not None:  # rows nobody reads (a pool's free slots): any ids the tables hold
            tokens, positions = tokens.index_fill(0, idle, 0), positions.index_fill(0, idle, 0)
        self._prepare(positions)
        weights = self._weight_array()
        if weights is None:
            return None
        for layer in layers:  # one storage for all: growing the first grows the others
            if length + n > layer.capacity:
                layer._grow(length + n)
        buffers = [(layer._key_buffer, layer._value_buffer) for layer in layers]
        if len({b.shape[2] for pair in buffers for b in pair}) != 1 or any(not (b.is_contiguous() and b.dtype == torch.float32) for pair in buffers for b in pair):
            return None
        out = torch.empty(rows, n, self.dims[1])
        native.follow_threads(self.lib)
        code = self.kernel(
            self.dims, self.scalars, weights, native.pointers([k for k, _ in buffers]), native.pointers([v for _, v in buffers]),
            buffers[0][0].shape[2], length, tokens.data_ptr(), positions.data_ptr(), 0 if mask is None else mask.data_ptr(), rows, n, out.data_ptr(),
        )
        if code == -2:
            raise IndexError("a token id or position is outside the model's embedding tables")
        if code != 0:
            raise MemoryError("decodekit's native step could not allocate its buffers")
        if idle is not None:  # as the packed PyTorch pass leaves them: zero results, keys and values
            out.index_fill_(0, idle, 0.0)
            for keys, values in buffers:
                keys[idle, :, length] = 0.0
                values[idle, :, length] = 0.0
        for layer in layers:
            layer.length = length + n
            layer._refresh_views()
        return out


def _idle(active: torch.Tensor | None, rows: int, n: int) -> torch.Tensor | None | bool:
    """The rows outside a one-token part's ``active`` tokens (None: every row is active);
    False where the kernel does not take the part (a block with some tokens inactive)."""
    if active is None or len(active) == rows * n:
        return None
    if n != 1:
        return False
    idle = torch.ones(rows, dtype=torch.bool)
    idle[active] = False
    return idle.nonzero().squeeze(1)


def _visible(mask: torch.Tensor, rows: int, n: int, slots: int) -> torch.Tensor | None:
    """A lean part's mask (``(rows, 1, n, slots)``: bool, visible; or float, 0 visible and the
    dtype's minimum hidden) as the kernel's contiguous bytes, or None for any other mask (a
    float mask with other values adds biases the kernel does not)."""
    if mask.shape != (rows, 1, n, slots):
        return None
    if mask.dtype == torch.bool:
        return mask.contiguous()
    if mask.dtype != torch.float32:
        return None
    visible = mask == 0
    if not bool((visible | (mask <= torch.finfo(mask.dtype).min)).all()):
        return None
    return visible


class NativeLlamaStep(NativeStep):
    """:class:`~decodekit.model.fast_llama.LlamaStep`'s one-token steps in ``dk_llama_step``."""

    function = "dk_llama_step"

    def __init__(self, step):
        super().__init__(step)
        # layers, dim, heads, kv heads, head dim, ffn, q/k norms, vocab
        self.dims = (ctypes.c_int64 * 8)(len(step.layers), step.embed.shape[1], step.heads, step.kv_heads, step.head_dim,
                                          step.layers[0].gate.weight.shape[0], int(step.layers[0].q_norm is not None), step.embed.shape[0])
        self.scalars = (ctypes.c_float * 2)(step.eps, step.scale)

    @classmethod
    def build(cls, step) -> NativeLlamaStep | None:
        lib = native.library()
        if lib is None or step.heads % step.kv_heads or not lib.dk_attends(step.head_dim):
            return None
        return cls(step)

    def _prepare(self, positions: torch.Tensor) -> None:
        self.step._rotary(positions.reshape(-1)[:1], int(positions.max()) + 1)  # the table covers every position

    def _slots(self) -> list[tuple[dict, str]]:
        step = self.step
        slots = [_place(step, "embed"), _place(step, "final_norm"), _LATER, _LATER]  # the rotary table: _tensors
        for x in step.layers:
            linears = (x.q, x.k, x.v, x.o, x.gate, x.up, x.down)
            q, k, v, o, gate, up, down = (_place(m, "weight") for m in linears)
            slots += [_place(x, "input_norm"), q, k, v, o, _place(x, "post_norm"), gate, up, down, _place(x, "q_norm"), _place(x, "k_norm")]
            slots += [_place(m, "bias") for m in linears]
        return slots

    def _tensors(self) -> list[torch.Tensor | None]:
        tensors = super()._tensors()
        tensors[2:4] = self.step._table  # remade as positions grow
        return tensors


class NativeGPT2Step(NativeStep):
    """:class:`~decodekit.model.fast_gpt2.GPT2Step`'s one-token steps in ``dk_gpt2_step``."""

    function = "dk_gpt2_step"

    def __init__(self, step):
        super().__init__(step)
        # layers, dim, heads, ffn, vocab, positions
        self.dims = (ctypes.c_int64 * 6)(len(step.blocks), step.dim, step.heads, _weight(step.blocks[0].fc).shape[1],
                                          step.embed.shape[0], step.position_table.shape[0])
        self.scalars = (ctypes.c_float * 2)(step.final.eps, step.scale)

    @classmethod
    def build(cls, step) -> NativeGPT2Step | None:
        lib = native.library()
        return cls(step) if lib is not None and lib.dk_attends(step.head_dim) else None

    def _slots(self) -> list[tuple[dict, str]]:
        step = self.step
        slots = [_place(step, "embed"), _place(step, "position_table"), _place(step.final, "weight"), _place(step.final, "bias")]
        for b in step.blocks:
            for m in (b.ln1, b.qkv, b.proj, b.ln2, b.fc, b.out):
                slots += [_place(m, "weight"), _place(m, "bias")]
        return slots


_LATER = ({"later": None}, "later")  # a slot a subclass's _tensors fills each step


def _place(owner, name: str) -> tuple[dict, str]:
    """Where ``owner.name`` is read each step: a module's parameter or buffer dict when it is
    one there, else the object's ``__dict__``; a value found none of these ways (a property)
    is read now, once."""
    for space in (getattr(owner, "_parameters", None), getattr(owner, "_buffers", None)):
        if space is not None and name in space:
            return space, name
    if name in vars(owner):
        return vars(owner), name
    return {name: getattr(owner, name)}, name


def _weight(linear: torch.nn.Linear, name: str = "weight") -> torch.Tensor | None:
    """A linear layer's weight (or bias), read past ``nn.Module.__getattr__`` where it is a
    parameter."""
    parameters = linear._parameters
    return parameters[name] if name in parameters else getattr(linear, name)
