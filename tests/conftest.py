"""Test-wide settings: never touch the network (every model is built in-process or shipped)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny tensors on a shared 2-core machine run several
    times faster that way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def without_native(monkeypatch):
    """decodekit's C kernels (:mod:`decodekit.native`) off: the PyTorch paths they stand in for."""
    from decodekit import native

    monkeypatch.setattr(native, "library", lambda: None)
