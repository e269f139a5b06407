"""decodekit's own CPU kernels for few-row decoding steps (``products.c``, ``attention.c``,
``steps.c``; ``threads.c`` splits large products between torch's OpenMP threads).

The C library is built with the package (an optional extension: where no C compiler is found,
or the platform is not x86-64, the install goes on without it) and loaded with ctypes; it is
used only on a CPU with AVX2 and FMA, and never when ``DECODEKIT_NATIVE=0``. Everything it
computes has a PyTorch path that is used otherwise, equal up to float rounding.

Why: at one to a few rows a decoding step's products stream every weight once, and on the
CPUs measured (``python bench/bench_gemv.py``) PyTorch's BLAS streams them at a fraction of
the memory's rate; these kernels come within ~1.5x of it, and sum every row in the same order
whatever rows it is computed with.
"""

from __future__ import annotations

import ctypes
import functools
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import torch

ROWS = 32  # products of at most this many rows use the kernel (more: the BLAS, faster from ~48 rows)
STEP_TOKENS = 48  # a whole step in one kernel call for at most this many tokens (rows x block; a 32-token draft and its root fit)

_pointer, _size = ctypes.c_void_p, ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (not built, not this CPU, or disabled)."""
    if os.environ.get("DECODEKIT_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    found = [here / f"_kernels{suffix}" for suffix in EXTENSION_SUFFIXES if (here / f"_kernels{suffix}").exists()]
    if not found:
        return None
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError:
        return None
    if not lib.dk_supported():
        return None
    lib.dk_linear.argtypes = [_pointer] * 4 + [_size] * 3
    lib.dk_linear.restype = None
    lib.dk_llama_step.argtypes = [_pointer] * 5 + [_size] * 2 + [_pointer] * 3 + [_size, _size, _pointer]
    lib.dk_llama_step.restype = ctypes.c_int
    lib.dk_attends.argtypes = [_size]
    lib.dk_gpt2_step.argtypes = lib.dk_llama_step.argtypes
    lib.dk_gpt2_step.restype = ctypes.c_int
    lib.dk_linear_t.argtypes = lib.dk_linear.argtypes
    lib.dk_linear_t.restype = None
    lib.dk_set_threads.argtypes = [_size]
    lib.dk_set_threads.restype = None
    return lib


_threads = [1]
_forked = [False]  # this process is a fork's child: OpenMP's threads did not come with it


def _mark_forked() -> None:
    _forked[0] = True


os.register_at_fork(after_in_child=_mark_forked)


def follow_threads(lib: ctypes.CDLL) -> None:
    """Split large products between as many threads as torch is set to (on torch's own OpenMP
    threads; each output is summed as with one). A forked child computes on one: libgomp's
    threads do not survive a fork, and a team asked for there can wait for them forever."""
    count = 1 if _forked[0] else torch.get_num_threads()
    if count != _threads[0]:
        lib.dk_set_threads(count)
        _threads[0] = count


def available() -> bool:
    """Whether the kernels are in use in this process."""
    return library() is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for ``x`` of shape ``(rows, in)``, or None where the
    kernel does not apply (no kernels; more than :data:`ROWS` rows; not contiguous float32 on
    the CPU; autograd wanted)."""
    lib = library()
    rows = x.shape[0]
    if lib is None or x.dim() != 2 or rows > ROWS or not plain(x, weight) or (bias is not None and not plain(bias)):
        return None
    out = x.new_empty(rows, weight.shape[0])
    follow_threads(lib)
    lib.dk_linear(x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), rows, weight.shape[0], weight.shape[1])
    return out


def pointers(tensors: list[torch.Tensor | None]) -> ctypes.Array:
    """A C array of the tensors' data pointers (NULL for None)."""
    return (_pointer * len(tensors))(*[0 if t is None else t.data_ptr() for t in tensors])


def plain(*tensors: torch.Tensor) -> bool:
    """Whether the tensors are what the kernels (and oneDNN's linear) take: contiguous float32
    on the CPU, no autograd wanted."""
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() and not (t.requires_grad and torch.is_grad_enabled())
        for t in tensors
    )
