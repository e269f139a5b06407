"""Model presets and a resumable, time-budgeted training loop.

The loop trains a causal LM on fixed-length chunks of one packed token stream
(files joined as ``<bos> file <eos>``). Chunk order is a seeded permutation per
epoch, so the data a step sees depends only on the seed and the step. The
learning rate warms up linearly, then follows a cosine to ``min_lr_ratio`` of
its peak; the cosine's progress is ``max(step / max_steps, elapsed / budget)``,
so a run always finishes its decay when its wall-clock budget ends.

A checkpoint (weights as safetensors, AdamW state as plain tensors, loop state
as JSON) is written every ``checkpoint_seconds`` and at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


MODEL_SIZES = {
    "target": ModelSize(hidden=256, layers=6, heads=8, kv_heads=4, intermediate=704),
    "draft": ModelSize(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=352),
    "tiny": ModelSize(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128),
}


def build_model(size: ModelSize, vocab_size: int, special_ids: dict[str, int], seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama with tied embeddings and a 4096-token RoPE range."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        pad_token_id=special_ids["pad"],
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TrainSettings:
    sequence_length: int = 512
    batch_size: int = 8
    peak_lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    budget_seconds: float = 60.0
    max_steps: int | None = None
    checkpoint_seconds: float = 180.0
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # the forward under bfloat16 autocast (weights and optimizer stay float32)


@dataclass
class LoopState:
    step: int = 0
    elapsed_seconds: float = 0.0
    tokens_seen: int = 0
    last_loss: float = float("nan")


def learning_rate(settings: TrainSettings, state: LoopState) -> float:
    progress = state.elapsed_seconds / settings.budget_seconds
    if settings.max_steps:
        progress = max(progress, state.step / settings.max_steps)
    progress = min(progress, 1.0)
    warmup = min(1.0, (state.step + 1) / settings.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    ratio = settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * cosine
    return settings.peak_lr * warmup * ratio


def batch_at(stream: torch.Tensor, step: int, settings: TrainSettings) -> torch.Tensor:
    """Rows of ``sequence_length + 1`` tokens for ``step``; (B, L + 1) int64.

    Subtle: chunk k is ``stream[k*L : k*L + L + 1]`` (one token overlap) so that
    every token of the stream is a prediction target exactly once per epoch.
    """
    length = settings.sequence_length
    chunks = (stream.numel() - 1) // length
    rows = []
    for row in range(settings.batch_size):
        position = step * settings.batch_size + row
        epoch, index = divmod(position, chunks)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        chunk = int(torch.randperm(chunks, generator=generator)[index])
        rows.append(stream[chunk * length : chunk * length + length + 1])
    return torch.stack(rows).long()


def _optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.peak_lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(directory: Path, model, optimizer, state: LoopState) -> None:
    """Write weights, optimizer tensors and loop state; replace atomically."""
    temporary = directory.with_name(directory.name + ".tmp")
    temporary.mkdir(parents=True, exist_ok=True)
    save_model(model, str(temporary / "model.safetensors"))
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    (temporary / "state.json").write_text(json.dumps(asdict(state)) + "\n")
    if directory.exists():
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
    os.replace(temporary, directory)


def load_checkpoint(directory: Path, model, optimizer) -> LoopState:
    """Restore a checkpoint written by ``save_checkpoint`` (no pickle: weights_only)."""
    device = next(model.parameters()).device
    load_model(model, str(directory / "model.safetensors"), device=str(device))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True, map_location=device))
    return LoopState(**json.loads((directory / "state.json").read_text()))


def train(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    settings: TrainSettings,
    checkpoint_dir: Path,
    log_path: Path,
    resume: bool,
    description: str = "train",
) -> LoopState:
    """Train ``model`` in place on ``stream`` (1-D int tensor, on the CPU) until the budget
    ends, on ``settings.device`` (the model is moved there)."""
    device = torch.device(settings.device)
    model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()
    optimizer = _optimizer(model, settings)
    state = LoopState()
    if resume and (checkpoint_dir / "state.json").exists():
        state = load_checkpoint(checkpoint_dir, model, optimizer)
    model.train()
    last_checkpoint = time.monotonic()
    tokens_per_step = settings.batch_size * settings.sequence_length
    bar = tqdm(total=int(settings.budget_seconds), unit="s", desc=description,
               initial=int(state.elapsed_seconds), mininterval=5.0)
    with log_path.open("a", encoding="utf-8") as log:
        while state.elapsed_seconds < settings.budget_seconds and (
            not settings.max_steps or state.step < settings.max_steps
        ):
            started = time.monotonic()
            lr = learning_rate(settings, state)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batch_at(stream, state.step, settings).to(device, non_blocking=True)
            # 1. forward/backward on (B, L) inputs against (B, L) shifted labels
            with autocast:
                logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # 2. clip, step, and account time/tokens
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm))
            optimizer.step()
            seconds = time.monotonic() - started
            state.step += 1
            state.elapsed_seconds += seconds
            state.tokens_seen += tokens_per_step
            state.last_loss = loss.item()
            bar.update(int(state.elapsed_seconds) - bar.n)
            bar.set_postfix(step=state.step, loss=f"{state.last_loss:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens_per_step / seconds:.0f}", refresh=False)
            if state.step % 10 == 0 or state.step == 1:
                record = {**asdict(state), "lr": lr, "grad_norm": grad_norm}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if time.monotonic() - last_checkpoint >= settings.checkpoint_seconds:
                save_checkpoint(checkpoint_dir, model, optimizer, state)
                last_checkpoint = time.monotonic()
    bar.close()
    save_checkpoint(checkpoint_dir, model, optimizer, state)
    model.eval()
    return state
