"""Speculation's cache operations of the transformers adapter: score a block of draft tokens
(a chain, or a tree through a 4D mask) in one forward, keep the accepted path, roll rows back,
squeeze out the holes rollback leaves. Mixed into :class:`~decodekit.model.hf.HFLanguageModel`,
whose model, cache layout (``state.extra``: cache, mask, length, next_position) and lean step
they use."""

from __future__ import annotations

import torch

from decodekit.model import quiet
from decodekit.model.base import DecodeState, tree_ancestors


class BlockSteps:
    @torch.inference_mode()
    def verify(self, state: DecodeState, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Score a block of draft tokens in one forward (decoder-only models).

        ``tokens``: ``(rows, n)`` int64. ``parents``: ``(rows, n)`` int64, the block index of each
        token's parent, ``-1`` for a token that directly continues the row's cache; parents come
        before their children. A chain is ``parents = [-1, 0, 1, ...]``; a tree is verified
        through a 4D attention mask (each token sees the row's cache and its own ancestors) and
        depth-based position ids, as in SpecInfer (Miao et al., 2024).

        Returns ``(rows, n, vocab)`` float32 logits: entry ``j`` is the next-token distribution
        after token ``j``'s path. Mutates the cache: the block occupies cache slots
        ``[length, length + n)`` until :meth:`keep` selects what stays.
        """
        if self.is_encoder_decoder:
            return self._verify_chain(state, tokens)
        part = self._verify_part(state, tokens, parents)
        self.forward_count += 1
        if self._lean_step() is not None:
            logits = self._project(self._step(*part))
        else:
            _, positions, _, block_mask, _ = part
            logits = self._block_forward(state.extra, input_ids=tokens, attention_mask=block_mask, position_ids=positions)
        self._verified(state, tokens.shape[1])
        return logits

    def _verify_part(self, state: DecodeState, tokens: torch.Tensor, parents: torch.Tensor) -> tuple:
        """The block's ``(tokens, positions, cache, mask, plan)`` (a part of the lean step's
        :meth:`parts`); :meth:`_verified` completes it after the forward."""
        extra = state.extra
        rows, n = tokens.shape
        length, mask = extra["length"], extra["mask"]
        if length + n > mask.shape[1]:
            grown = mask.new_zeros(rows, max(length + n, 2 * mask.shape[1]))
            grown[:, : mask.shape[1]] = mask
            extra["mask"] = mask = grown
        ancestors = tree_ancestors(parents)  # (rows, n, n)
        depth = ancestors.sum(-1) - 1  # (rows, n)
        positions = extra["next_position"][:, None] + depth
        visible = torch.cat([mask[:, None, :length].bool().expand(rows, n, length), ancestors], dim=-1)
        dtype = next(self.model.parameters()).dtype
        block_mask = torch.zeros(visible.shape, dtype=dtype, device=tokens.device)
        block_mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return tokens, positions, extra["cache"], block_mask[:, None], None

    @staticmethod
    def _verified(state: DecodeState, n: int) -> None:
        extra = state.extra
        extra["block"] = (extra["length"], n)
        extra["length"] += n
        extra["group"] = 1  # keep/compact move rows' slots independently

    def _verify_chain(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """An encoder-decoder model's block: a chain (every valid token continues the one
        before it; padding comes last), scored causally by the decoder after its cache, as the
        model's own forward does for several decoder tokens. Every row keeps the same number of
        its tokens (:meth:`keep`), so positions stay shared and no row has holes."""
        extra = state.extra
        length, n = extra["length"], tokens.shape[1]
        self.forward_count += 1
        logits = self._block_forward(extra, encoder_outputs=extra["encoder"], attention_mask=extra["encoder_mask"], decoder_input_ids=tokens)
        extra["length"] = length + n
        extra["block"] = (length, n)
        return logits

    def _block_forward(self, extra: dict, **inputs) -> torch.Tensor:
        """The model's own forward over a block after the state's cache: float32 logits at
        every block position."""
        if self._keeps_logits:
            inputs["logits_to_keep"] = 0
        with quiet.driven(), self._rotary.of(extra):
            out = self.model(**inputs, **{self._cache_kw: extra["cache"]}, use_cache=True, return_dict=True)
        return out.logits.float()

    @torch.inference_mode()
    def keep(self, state: DecodeState, index: torch.Tensor, count: torch.Tensor) -> None:
        """Keep, for row ``r``, the block tokens ``index[r, :count[r]]`` (a root-to-node path of
        the last :meth:`verify` block) and forget the rest of the block (speculative rollback).
        Encoder-decoder models keep the first ``m`` block tokens of every row (``count`` is
        ``m`` everywhere: the loop keeps as many for all rows).

        ``index``: ``(rows, m)`` int64 block indices; ``count``: ``(rows,)`` int64, ``<= m``.
        The kept keys/values move to the slots right after the row's previous tokens; a row
        that keeps fewer than ``m`` leaves masked holes, so rows may keep different numbers of
        tokens. Advances each row's next position by ``count[r]``.
        """
        extra = state.extra
        start, _ = extra.pop("block")
        rows, m = index.shape
        if self.is_encoder_decoder:  # a chain's first m tokens, the same m for every row
            for layer in extra["cache"].self_attention_cache.layers:
                layer.truncate(start + m)
            extra["length"] = start + m
            return
        # a chain's accepted path is the block's first slots, already in place: nothing to move
        # (checked on the CPU only, where reading the path costs no device sync)
        moved = index.device.type != "cpu" or not torch.equal(index, torch.arange(m, device=index.device).expand(rows, m))
        for layer in extra["cache"].layers:
            for name in ("_key_buffer", "_value_buffer") if moved else ():
                buffer = getattr(layer, name)
                gather = (start + index)[:, None, :, None].expand(rows, buffer.shape[1], m, buffer.shape[3])
                buffer[:, :, start : start + m] = torch.gather(buffer, 2, gather)
            layer.truncate(start + m)
        kept = torch.arange(m, device=index.device)[None, :] < count[:, None]
        extra["mask"][:, start : start + m] = kept.to(extra["mask"].dtype)
        extra["mask"][:, start + m :] = 0
        extra["holes"] = True
        extra["length"] = start + m
        extra["next_position"] = extra["next_position"] + count

    @torch.inference_mode()
    def compact(self, state: DecodeState) -> None:
        """Squeeze out the masked holes :meth:`keep` left: each row's real slots move, in
        order, to the right end of ``[0, m)`` with ``m`` the largest real count. Keys carry
        their rotary positions, so moving them changes nothing the model computes."""
        extra = state.extra
        length = extra["length"]
        real = extra["mask"][:, :length].bool()
        m = int(real.sum(-1).max())
        order = torch.argsort(real.to(torch.int8), dim=1, stable=True)[:, length - m :]  # (rows, m)
        rows = order.shape[0]
        for layer in extra["cache"].layers:
            for name in ("_key_buffer", "_value_buffer"):
                buffer = getattr(layer, name)
                gather = order[:, None, :, None].expand(rows, buffer.shape[1], m, buffer.shape[3])
                buffer[:, :, :m] = torch.gather(buffer[:, :, :length], 2, gather)
            layer.truncate(m)
        extra["mask"][:, :m] = real.gather(1, order).to(extra["mask"].dtype)
        extra["mask"][:, m:] = 0
        extra["holes"] = bool((real.sum(-1) < m).any())
        extra["length"] = m

    @torch.inference_mode()
    def rewind(self, state: DecodeState, count: torch.Tensor) -> None:
        """Forget the last ``count[r]`` tokens of row ``r`` (``(rows,)`` int64), which must be
        the row's newest cache slots (e.g. a draft model's own unverified tokens). Leaves
        masked holes; the shared length shrinks by what every row forgot."""
        extra = state.extra
        length, mask = extra["length"], extra["mask"]
        most = int(count.max()) if count.numel() else 0
        if most == 0:
            return
        window = torch.arange(length - most, length, device=count.device)[None, :]
        forget = window >= (length - count)[:, None]
        mask[:, length - most : length].masked_fill_(forget, 0)
        extra["holes"] = True
        extra["next_position"] = extra["next_position"] - count
        least = int(count.min())
        if least > 0:
            for layer in extra["cache"].layers:
                layer.truncate(length - least)
            extra["length"] = length - least
