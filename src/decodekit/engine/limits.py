"""Limits and errors at the engine's edges: a memory estimate before any allocation, and
model failures turned into named errors."""

from __future__ import annotations

from decodekit.errors import ConfigError, DecodeKitError, ModelError


def model_error(model, where: str, error: BaseException) -> BaseException:
    """A decodekit error stays as it is; anything the model's own code raised becomes a
    :class:`ModelError` naming the architecture and where it failed."""
    if isinstance(error, DecodeKitError):
        return error
    inner = getattr(model, "model", model)
    wrapped = ModelError(f"{type(inner).__name__} failed during {where}: {type(error).__name__}: {str(error)[:300]}")
    wrapped.__cause__ = error
    return wrapped


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_rows(model, rows: int, positions: int, new_tokens: int, field: str, value: object, what: str = "rows") -> None:
    """Refuse ``rows`` rows of ``positions`` cache slots each that would not fit in memory,
    before allocating anything: cache (rows x positions x bytes per position) plus a few
    ``(rows, vocab)`` float tensors a step. Names ``field`` (=``value``) in the error."""
    per_token = getattr(model, "cache_bytes_per_token", None)
    limit = available_memory()
    if per_token is None or not limit:
        return
    estimate = rows * positions * per_token() + rows * model.vocab_size * 4 * 8 + rows * new_tokens * 16
    if estimate > 0.8 * limit:
        raise ConfigError(
            field, value,
            f"fewer {what}: {rows} rows need about {estimate / 2**30:.1f} GiB, more than 80% of the "
            f"{limit / 2**30:.1f} GiB of memory available",
        )


def check_memory(model, strategy, prompts: list[list[int]], options) -> None:
    """:func:`check_rows` for a group: its prompts times the strategy's rows per prompt."""
    field = "n" if getattr(strategy, "n", None) is not None and not hasattr(strategy, "num_beams") else "num_beams"
    width = getattr(strategy, "n", None) or getattr(strategy, "num_beams", 1) or 1
    named = hasattr(strategy, field)
    positions = max(len(p) for p in prompts) + options.max_new_tokens + 8
    check_rows(model, len(prompts) * int(width), positions, options.max_new_tokens, field if named else "prompts", width if named else len(prompts))
