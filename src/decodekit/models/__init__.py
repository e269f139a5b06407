"""The embedded default checkpoints, shipped inside the package.

``stdlib-code`` is a small Llama trained on the Python standard library;
``stdlib-code-draft`` is its draft model for speculative decoding (same
tokenizer, about a fifth of the parameters). Both are HF directories with
safetensors weights; MODEL.md at the repository root is their model card and
``python -m decodekit.train`` rebuilds them.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

DEFAULT_MODEL = "stdlib-code"
EMBEDDED_MODELS = ("stdlib-code", "stdlib-code-draft")
_HERE = Path(__file__).resolve().parent


def embedded_model_path(name: str) -> Path:
    """Directory of the embedded model ``name``; ``ValueError`` for any other name."""
    if name not in EMBEDDED_MODELS:
        allowed = ", ".join(repr(model) for model in EMBEDDED_MODELS)
        raise ValueError(f"unknown embedded model {name!r}; allowed: {allowed}")
    return _HERE / name


def stdlib_root() -> Path:
    """Root of the running interpreter's standard library (the training corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def held_out_files() -> list[str]:
    """Validation files (paths relative to ``stdlib_root()``) the models never trained on."""
    manifest = embedded_model_path(DEFAULT_MODEL) / "corpus.json"
    return list(json.loads(manifest.read_text(encoding="utf-8"))["validation"])
