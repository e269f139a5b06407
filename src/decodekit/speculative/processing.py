"""Logits processors under speculation: each draft node is processed with the history of its
own path (the row's tokens, then the draft tokens from the root to the node), as plain
decoding would process that output position. Mixed into
:class:`~decodekit.speculative.loop.SpeculativeDecoding` (its rows' ``processing``: their
group's processors and prompt length, their prompts and outputs, and
``encoder_decoder``/``start_token``)."""

from __future__ import annotations

import torch

from decodekit.model.base import tree_ancestors


class ProcessedBlocks:
    def _history(self, prompt: list[int], out: list[int], pad: int) -> list[int]:
        """A row's history as plain decoding's processors see it: the prompt left-padded with
        -1 to its group's prompt length ``pad``, then the generated tokens (encoder-decoder:
        the decoder start token, then the generated tokens)."""
        if self.encoder_decoder:
            return [self.start_token] + out
        return [-1] * (pad - len(prompt)) + prompt + out

    def _process_first(self, logits: torch.Tensor, prompts, width: int, processing: tuple) -> torch.Tensor:
        processors, pad = processing
        if processors is None:
            return logits
        rows = logits.shape[0]
        history = [self._history(prompts[r // width], [], pad) for r in range(rows)]
        ids = torch.tensor(history, dtype=torch.long, device=logits.device)
        return processors(ids, logits.clone())

    def _process_block(self, logits, live, inputs, parents, valid) -> torch.Tensor:
        """``(rows, n, V)`` block logits -> processed, each valid node of a row with processors
        with the history of its path (row tokens, then the draft tokens from the root to the
        node). Nodes are grouped by processors and history length, one call per group."""
        if all(self.processing[r][0] is None for r in live):
            return logits
        rows, n, _ = logits.shape
        ancestors = tree_ancestors(parents).tolist()
        tokens, valid = inputs.tolist(), valid.tolist()
        groups: dict[tuple[int, int], tuple] = {}
        for i, r in enumerate(live):
            processors, pad = self.processing[r]
            if processors is None:
                continue
            base = self._history(self.row_prompts[r], self.out[r], pad)
            for j in range(n):
                if not valid[i][j]:
                    continue
                # parents precede children, so block order along a path is depth order
                path = [tokens[i][k] for k in range(1, j + 1) if ancestors[i][j][k]]
                history = base + path
                groups.setdefault((id(processors), len(history)), (processors, []))[1].append((i, j, history))
        out = logits.clone()
        for processors, items in groups.values():
            index_i = torch.tensor([i for i, _, _ in items], device=logits.device)
            index_j = torch.tensor([j for _, j, _ in items], device=logits.device)
            ids = torch.tensor([h for _, _, h in items], dtype=torch.long, device=logits.device)
            out[index_i, index_j] = processors(ids, logits[index_i, index_j])
        return out
