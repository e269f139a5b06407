"""Loading a model: :func:`load` for embedded models, local checkpoints, built transformers
models and any :class:`~decodekit.model.base.LanguageModel`. Never downloads; safetensors only."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from decodekit.api import Decoder
from decodekit.errors import ConfigError, InputError
from decodekit.generation_config import GenerationDefaults
from decodekit.model.base import LanguageModel
from decodekit.model.hf import HFLanguageModel
from decodekit.model.prompt_cache import PromptCache


def _embedded(name: str) -> Path | None:
    try:
        from decodekit.models import EMBEDDED_MODELS, embedded_model_path
    except ImportError:
        return None
    return embedded_model_path(name) if name in EMBEDDED_MODELS else None


def load(
    model: str | Path | torch.nn.Module | LanguageModel | None = None,
    tokenizer=None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    use_generation_config: bool = True,
    prompt_cache_mib: int = 0,
) -> Decoder:
    """A :class:`Decoder` for an embedded model name (default: the embedded code model), a
    local transformers checkpoint directory, an already-built transformers model (pass its
    tokenizer), or any :class:`~decodekit.model.base.LanguageModel`. Never downloads.
    ``use_generation_config``: apply the model's ``generation_config`` (strategy, processors,
    lengths) as defaults, as transformers ``generate`` does; explicit settings win.
    ``prompt_cache_mib``: keep up to this many MiB of prefilled prompts, so that a prompt seen
    again skips its prefill (:mod:`decodekit.model.prompt_cache`; the lean prefill of
    Llama-family and GPT-2 models on the CPU uses it). Off by default: entries are dropped when
    the weights change in place, but not when they change through ``.data``."""
    if not isinstance(prompt_cache_mib, int) or isinstance(prompt_cache_mib, bool) or prompt_cache_mib < 0:
        raise ConfigError("prompt_cache_mib", prompt_cache_mib, "an integer >= 0 (MiB; 0: no prompt cache)")
    decoder = _load(model, tokenizer, device, dtype, trust_remote_code, use_generation_config)
    if prompt_cache_mib and hasattr(decoder.model, "prompt_cache"):
        decoder.model.prompt_cache = PromptCache(prompt_cache_mib << 20)
    return decoder


def _load(model, tokenizer, device, dtype, trust_remote_code: bool, use_generation_config: bool) -> Decoder:
    if isinstance(model, LanguageModel) and not isinstance(model, torch.nn.Module):
        return Decoder(model, tokenizer)
    device = _device(device)
    if isinstance(model, torch.nn.Module):
        defaults = _defaults(model) if use_generation_config else None
        return Decoder(HFLanguageModel(model.to(device)), tokenizer, defaults=defaults)
    if model is not None and not isinstance(model, str | Path):
        raise InputError(f"model: {type(model).__name__}; give an embedded model name, a checkpoint directory or a transformers model")
    name = "stdlib-code" if model is None else str(model)
    path = _embedded(name)
    if path is None:
        path = Path(name)
        if not (path / "config.json").is_file():
            raise InputError(
                f"model: {name!r} is neither an embedded model name nor a local directory holding a "
                "transformers checkpoint (config.json); decodekit never downloads"
            )
        if not any(path.glob("*.safetensors")):
            pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
            what = f"only pickle weights ({', '.join(sorted(pickled))})" if pickled else "no weights"
            raise InputError(f"model: {name!r} holds {what}; decodekit loads safetensors only (never unpickles)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    local = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **local)
    except Exception as error:  # a bad config.json or an architecture transformers lacks
        raise InputError(f"model: {name!r} has a config.json transformers cannot read: {type(error).__name__}: {str(error)[:200]}") from None
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        with _no_progress_bar():  # a local load takes a blink; its bar would only be noise
            hf_model = auto.from_pretrained(path, use_safetensors=True, **local, **kwargs).to(device)
    except Exception as error:  # corrupted or truncated weights, a model class transformers lacks
        raise InputError(f"model: {name!r} could not be loaded: {type(error).__name__}: {str(error)[:200]}") from None
    if tokenizer is None and (path / "tokenizer_config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **local)
        except Exception as error:
            raise InputError(f"model: {name!r} has a tokenizer transformers cannot read: {type(error).__name__}: {str(error)[:200]}") from None
    defaults = _defaults(hf_model) if use_generation_config else None
    return Decoder(HFLanguageModel(hf_model), tokenizer, name=name, defaults=defaults)


def _defaults(hf_model) -> GenerationDefaults:
    from decodekit.generation_config import from_generation_config

    try:
        return from_generation_config(getattr(hf_model, "generation_config", None))
    except (TypeError, ValueError) as error:
        raise InputError(f"model: its generation_config has a setting decodekit cannot read ({error}); load(..., use_generation_config=False) skips it") from None


def _device(device) -> torch.device:
    """``device`` as a torch device that exists on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu' or 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", str(device), "a device this machine has: no CUDA device is available (use 'cpu')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", str(device), "a device this machine has: MPS is not available (use 'cpu')")
    return device


@contextlib.contextmanager
def _no_progress_bar():
    """transformers' progress bars off for the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
