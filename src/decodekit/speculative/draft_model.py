"""A draft model: a small causal LM sharing the target's vocabulary guesses ``num_tokens``
tokens autoregressively (Leviathan et al., 2023; Chen et al., 2023).

The draft model keeps its own KV cache in step with the accepted tokens: before drafting it
consumes the tokens it has not seen yet (the last step's recovered or bonus token, plus the
target's final draft token when everything was accepted), and after verification it forgets
its own draft tokens the target rejected (:meth:`HFLanguageModel.rewind`).
"""

from __future__ import annotations

import torch

from decodekit.errors import ConfigError
from decodekit.search.base import inverse_cdf
from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp
from decodekit.speculative.config import DraftModelConfig


def load_draft_model(config: DraftModelConfig, device: torch.device | str = "cpu"):
    """The :class:`~decodekit.model.hf.HFLanguageModel` that ``config.model`` names."""
    from decodekit.model.hf import HFLanguageModel

    model = config.model
    if isinstance(model, HFLanguageModel):
        return model
    if isinstance(model, torch.nn.Module):
        return HFLanguageModel(model.to(device))
    from decodekit.loading import load

    return load(model, device=device).model


def check_vocabulary(target_vocab: int, draft) -> None:
    """Raise ``ConfigError`` (before any forward) unless the draft scores the same vocabulary."""
    if draft.vocab_size != target_vocab or draft.is_encoder_decoder:
        raise ConfigError(
            "speculative.config.model",
            getattr(draft.model.config, "name_or_path", type(draft.model).__name__),
            f"a decoder-only model with the target's vocabulary ({target_vocab} logits); it has {draft.vocab_size}",
        )


class DraftModelProposer:
    """Chain drafts from a small model (see module docstring)."""

    name = "draft"

    def __init__(self, config: DraftModelConfig, draft_model):
        self.config, self.draft = config, draft_model
        self.state = None
        self.forward_count = 0

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        self.warp = warp
        self.generators = tuple(generators) or (None,) * len(prompts)
        # the draft's U[0, 1) numbers by row and absolute position, drawn in chunks from the
        # row's own generator: what a row drafts never depends on the other rows
        self._uniforms = [torch.empty(0) for _ in prompts]
        # Capacity is only a first guess: the cache and mask grow on demand.
        self.state = self.draft.start(prompts, 256)
        self.forward_count += 1
        self._rows = list(range(len(prompts)))
        self._seen = [len(p) for p in prompts]  # tokens of each row in the draft cache

    def _sync_rows(self, rows: list[int]) -> None:
        if rows != self._rows:
            position = {row: i for i, row in enumerate(self._rows)}
            keep = torch.tensor([position[row] for row in rows], dtype=torch.long)
            self.draft.select(self.state, keep.to(self.state.logits.device))
            self._rows = list(rows)

    def _uniform(self, row: int, position: int) -> torch.Tensor:
        table = self._uniforms[row]
        while position >= len(table):
            table = torch.cat([table, torch.rand(512, generator=self.generators[row])])
        self._uniforms[row] = table
        return table[position : position + 1]

    def _choose(self, logits: torch.Tensor, rows: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.warp is None:
            return logits.argmax(-1), None
        probs = self.warp(logits).softmax(-1)
        u = torch.cat([self._uniform(row, p) for row, p in zip(rows, positions)]).to(probs.device)
        return inverse_cdf(probs, u), probs

    @torch.inference_mode()
    def propose(self, context: SpeculationContext) -> Draft:
        self._sync_rows(context.rows)
        state, rows = self.state, len(context.rows)
        device = state.logits.device
        k = min(self.config.num_tokens, max(context.limits))
        if k <= 0:
            return Draft.empty(rows, device)
        # 1. Catch up on the tokens the draft model has not seen (one forward, chain block).
        new = [seq[self._seen[row] :] for row, seq in zip(context.rows, context.sequences)]
        width = max(len(t) for t in new)
        block = torch.zeros((rows, width), dtype=torch.long)
        for i, tokens in enumerate(new):
            block[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        count = torch.tensor([len(t) for t in new], dtype=torch.long, device=device)
        chain = torch.arange(-1, width - 1, device=device).expand(rows, width)
        logits = self.draft.verify(state, block.to(device), chain)
        self.draft.keep(state, torch.arange(width, device=device).expand(rows, width), count)
        last = logits[torch.arange(rows, device=device), count - 1]  # (rows, vocab)
        # 2. Draft k tokens; the last one is never fed (verification decides its fate).
        tokens, probs = [], []
        for j in range(k):
            positions = [len(seq) + j for seq in context.sequences]
            token, dist = self._choose(last, context.rows, positions)
            tokens.append(token)
            probs.append(dist)
            if j + 1 < k:
                last = self.draft.verify(
                    state, token[:, None], torch.full((rows, 1), -1, device=device)
                )[:, 0]
                self.draft.keep(
                    state,
                    torch.zeros((rows, 1), dtype=torch.long, device=device),
                    torch.ones(rows, dtype=torch.long, device=device),
                )
        self.forward_count += k
        self._fed_draft = k - 1
        for row, sequence in zip(context.rows, context.sequences):
            self._seen[row] = len(sequence) + k - 1
        draft_tokens = torch.stack(tokens, 1)
        limits = torch.tensor(context.limits, device=device)
        valid = torch.arange(k, device=device)[None, :] < limits[:, None]
        stacked = torch.stack(probs, 1) if self.warp is not None else None
        return Draft(
            draft_tokens,
            torch.arange(-1, k - 1, device=device).expand(rows, k).clone(),
            valid,
            stacked,
        )

    def observe(self, verification: Verification) -> None:
        """Forget the draft tokens the target rejected, so the cache holds accepted tokens only."""
        fed = getattr(self, "_fed_draft", 0)
        if fed == 0:
            return
        kept = [min(a, fed) for a in verification.accepted]
        forget = torch.tensor(
            [fed - k for k in kept], dtype=torch.long, device=self.state.logits.device
        )
        self.draft.rewind(self.state, forget)
        for row, k in zip(verification.rows, kept):
            self._seen[row] -= fed - k
        self._fed_draft = 0
        self._steps = getattr(self, "_steps", 0) + 1
        if self._steps % 32 == 0:  # squeeze out the holes rewinds leave, now and then
            self.draft.compact(self.state)

    def finish(self, outputs: list[list[int]]) -> None:
        self.state = None
