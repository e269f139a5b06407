"""A draft model: a small causal LM sharing the target's vocabulary guesses ``num_tokens``
tokens autoregressively (Leviathan et al., 2023; Chen et al., 2023), as a chain or, with
``branching``, as a tree whose siblings are drawn without replacement (RSD-C, Jeon et al.,
2024; :mod:`decodekit.speculative.rsd`).

The draft model keeps its own KV cache in step with the accepted tokens: before drafting it
consumes the tokens it has not seen yet (the last step's recovered or bonus token, plus the
target's final draft token when everything was accepted). A chain's draft tokens stay in the
cache and the rejected ones are forgotten after verification (:meth:`HFLanguageModel.rewind`);
a tree is scored one level deeper per forward (the whole tree so far, each node seeing only its
ancestors) and dropped right away, so the next catch-up feeds the accepted path.
"""

from __future__ import annotations

import torch

from decodekit.errors import ConfigError
from decodekit.search.base import race
from decodekit.speculative.base import Draft, SpeculationContext, Verification, Warp
from decodekit.speculative.config import DraftModelConfig
from decodekit.speculative.rsd import TreeLayout, gumbel_noise, without_replacement


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
    """Chain or tree drafts from a small model (see module docstring)."""

    name = "draft"

    def __init__(self, config: DraftModelConfig, draft_model):
        self.config, self.draft = config, draft_model
        widths = config.widths
        self.tree = TreeLayout.of(widths) if max(widths, default=1) > 1 else None
        if self.tree is not None:
            self._slots, self._noise_counts = self.tree.noise_slots()
        if max(widths, default=1) > draft_model.vocab_size:
            raise ConfigError(
                "speculative.config.branching",
                config.branching,
                f"children per node at most the vocabulary size {draft_model.vocab_size}",
            )
        self.state = None
        self.forward_count = 0
        self._fed_draft = self._steps = 0
        # rows join and leave a running call where the draft model's states merge
        self.joins = bool(getattr(draft_model, "can_merge", False))

    def begin(
        self,
        prompts: list[list[int]],
        warp: Warp | None,
        generators: tuple[torch.Generator | None, ...] = (),
    ) -> None:
        self.warp = warp
        self.generators: dict[int, torch.Generator | None] = {}
        # the draft's U[0, 1) numbers by row and absolute position, drawn in chunks from the
        # row's own generator: what a row drafts never depends on the other rows
        self._uniforms: dict[int, torch.Tensor] = {}
        self._seen: dict[int, int] = {}  # tokens of each row in the draft cache
        self.state, self._rows = None, []
        self.join(list(range(len(prompts))), prompts, generators)

    def join(self, rows: list[int], prompts: list[list[int]], generators: tuple[torch.Generator | None, ...] = ()) -> None:
        """Rows ``rows`` (ids new to this call) begin with ``prompts``: prefilled by the draft
        model and merged into its running state."""
        generators = tuple(generators) or (None,) * len(prompts)
        # Capacity is only a first guess: the cache and mask grow on demand.
        new = self.draft.start(prompts, 256)
        self.forward_count += 1
        self.state = new if self.state is None else self.draft.merge(self.state, new)
        for row, prompt, generator in zip(rows, prompts, generators):
            self.generators[row], self._uniforms[row], self._seen[row] = generator, torch.empty(0), len(prompt)
        self._rows += list(rows)

    def leave(self, rows: list[int], outputs: list[list[int]]) -> None:
        """Rows that finished (their draft cache rows go at the next draft)."""
        for row in rows:
            self.generators.pop(row, None)
            self._uniforms.pop(row, None)
            self._seen.pop(row, None)

    def _sync_rows(self, rows: list[int]) -> None:
        if rows != self._rows:
            position = {row: i for i, row in enumerate(self._rows)}
            keep = torch.tensor([position[row] for row in rows], dtype=torch.long)
            self.draft.select(self.state, keep.to(self.state.logits.device))
            self._rows = list(rows)

    def _uniform(self, row: int, position: int) -> torch.Tensor:
        table = self._uniforms[row]
        generator = self.generators[row]
        where = generator.device if generator is not None else "cpu"
        while position >= len(table):
            table = torch.cat([table, torch.rand(512, generator=generator, device=where).cpu()])
        self._uniforms[row] = table
        return table[position : position + 1]

    def _choose(self, logits: torch.Tensor, rows: list[int], positions: list[int], warps: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each row's draft token, by its own sampler (``warps``; None: the run's for every
        row), and the draft distributions (None when every row is greedy)."""
        if warps is None or all(w is self.warp for w in warps):
            if self.warp is None:
                return logits.argmax(-1), None
            warped = self.warp(logits)
            u = torch.cat([self._uniform(row, p) for row, p in zip(rows, positions)]).to(warped.device)
            return race(warped, u), warped.softmax(-1)
        # requests that joined with samplers of their own: each sampler over its rows (a row's
        # draft depends on its own logits and numbers alone); greedy rows draft their argmax
        tokens = logits.argmax(-1)
        probs = torch.zeros_like(logits).scatter_(1, tokens[:, None], 1.0)
        by_warp: dict[int, tuple] = {}
        for i, warp in enumerate(warps):
            if warp is not None:
                by_warp.setdefault(id(warp), (warp, []))[1].append(i)
        if not by_warp:
            return tokens, None
        for warp, at in by_warp.values():
            index = torch.tensor(at, dtype=torch.long, device=logits.device)
            warped = warp(logits.index_select(0, index))
            u = torch.cat([self._uniform(rows[i], positions[i]) for i in at]).to(warped.device)
            tokens = tokens.index_copy(0, index, race(warped, u))
            probs = probs.index_copy(0, index, warped.softmax(-1))
        return tokens, probs

    def _catch_up(self, context: SpeculationContext) -> torch.Tensor:
        """Feed the tokens the draft model has not seen (one forward, a chain block); the
        ``(rows, vocab)`` draft logits after each row's last token."""
        state, rows = self.state, len(context.rows)
        device = state.logits.device
        new = [seq[self._seen[row] :] for row, seq in zip(context.rows, context.sequences)]
        width = max(len(t) for t in new)
        block = torch.zeros((rows, width), dtype=torch.long)
        for i, tokens in enumerate(new):
            block[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        count = torch.tensor([len(t) for t in new], dtype=torch.long, device=device)
        chain = torch.arange(-1, width - 1, device=device).expand(rows, width)
        logits = self.draft.verify(state, block.to(device), chain)
        self.draft.keep(state, torch.arange(width, device=device).expand(rows, width), count)
        for row, sequence in zip(context.rows, context.sequences):
            self._seen[row] = len(sequence)
        return logits[torch.arange(rows, device=device), count - 1]

    @torch.inference_mode()
    def propose(self, context: SpeculationContext) -> Draft:
        self._sync_rows(context.rows)
        state, rows = self.state, len(context.rows)
        device = state.logits.device
        k = min(self.config.num_tokens, max(context.limits))
        if k <= 0:
            return Draft.empty(rows, device)
        # 1. Catch up on the tokens the draft model has not seen.
        last = self._catch_up(context)  # (rows, vocab)
        if self.tree is not None:
            return self._propose_tree(context, last, k)
        # 2. Draft k tokens; the last one is never fed (verification decides its fate).
        tokens, probs = [], []
        for j in range(k):
            positions = [len(seq) + j for seq in context.sequences]
            token, dist = self._choose(last, context.rows, positions, context.warps)
            tokens.append(token)
            probs.append(dist)
            if j + 1 < k:  # one plain step (a one-token block, without the block machinery)
                self.draft.advance(state, None, token)
                last = state.logits
        self.forward_count += k
        self._fed_draft = k - 1
        for row, sequence in zip(context.rows, context.sequences):
            self._seen[row] = len(sequence) + k - 1
        draft_tokens = torch.stack(tokens, 1)
        limits = torch.tensor(context.limits, device=device)
        valid = torch.arange(k, device=device)[None, :] < limits[:, None]
        stacked = torch.stack(probs, 1) if probs[0] is not None else None
        return Draft(
            draft_tokens,
            torch.arange(-1, k - 1, device=device).expand(rows, k).clone(),
            valid,
            stacked,
        )

    def _tree_noise(self, rows: list[int], vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The random numbers of one tree, each row's from its own generator: ``(rows, g,
        vocab)`` Gumbel noise for the nodes whose children are drawn without replacement
        (``width > 1``) and ``(rows, c)`` U[0, 1) numbers for the nodes with one child (a
        single inverse-CDF draw, far cheaper than a vocabulary of noise), level by level.
        Subtle: always the whole tree's worth, however deep this step drafts, so what a row
        draws never depends on the other rows of the batch."""
        gumbels, singles = self._noise_counts
        uniforms = []
        for row in rows:
            generator = self.generators[row]
            where = generator.device if generator is not None else device
            draw = torch.rand(gumbels * vocab + singles, generator=generator, device=where)
            uniforms.append(draw.to(device))
        uniforms = torch.stack(uniforms)
        gumbel = gumbel_noise(uniforms[:, : gumbels * vocab].view(len(rows), gumbels, vocab))
        return gumbel, uniforms[:, gumbels * vocab :]

    def _propose_tree(self, context: SpeculationContext, last: torch.Tensor, depth: int) -> Draft:
        """An RSD-C tree ``depth`` levels deep (:class:`~decodekit.speculative.rsd.TreeLayout`):
        level ``d``'s nodes are drawn without replacement (greedy: the top tokens) from the
        draft distributions after level ``d - 1``'s nodes, which one forward over the tree so
        far computes. The draft cache keeps none of it."""
        tree, state = self.tree, self.state
        (rows, vocab), device = last.shape, last.device
        total = tree.starts[depth]
        parents = tree.parents[:total].to(device).expand(rows, total)
        tokens = torch.zeros((rows, total), dtype=torch.long, device=device)
        drawn = torch.zeros((rows, total), dtype=torch.bool, device=device)
        sampling = self.warp is not None
        probs = torch.zeros((rows, total, vocab), device=device) if sampling else None
        if sampling:
            gumbel, single = self._tree_noise(context.rows, vocab, device)
        level = last[:, None]  # (rows, nodes of the previous level, vocab): the root first
        for d in range(depth):
            width, nodes = tree.widths[d], tree.level(d)
            if sampling:  # 1. the children of every node of the previous level
                dist = self.warp(level.reshape(-1, vocab)).softmax(-1).reshape(level.shape)
                above = self._slots[d]
                if width > 1:
                    picked, ok = without_replacement(dist, gumbel[:, above], width)
                else:
                    u = single[:, above].reshape(-1)
                    picked = race(dist.reshape(-1, vocab).log(), u).view(rows, -1, 1)
                    ok = torch.ones_like(picked, dtype=torch.bool)
                probs[:, nodes] = dist.repeat_interleave(width, dim=1)
            else:
                top = level.topk(width, dim=-1)
                picked, ok = top.indices, top.values > -torch.inf
            tokens[:, nodes] = picked.reshape(rows, -1)
            ok = ok.reshape(rows, -1)
            if d > 0:  # the children of a node that was not drawn are not drawn either
                ok &= drawn[:, tree.level(d - 1)].repeat_interleave(width, dim=1)
            drawn[:, nodes] = ok
            if d + 1 < depth:  # 2. the draft distributions after this level's nodes
                end = tree.starts[d + 1]
                logits = self.draft.verify(state, tokens[:, :end], parents[:, :end])
                self.draft.keep(
                    state,
                    torch.zeros((rows, 0), dtype=torch.long, device=device),
                    torch.zeros(rows, dtype=torch.long, device=device),
                )
                level = logits[:, nodes]
        self.forward_count += depth
        limits = torch.tensor(context.limits, device=device)
        valid = drawn & (tree.depth[:total].to(device)[None, :] < limits[:, None])
        return Draft(tokens, parents.clone(), valid, probs)

    def observe(self, verification: Verification) -> None:
        """Forget the draft tokens the target rejected, so the cache holds accepted tokens only."""
        fed = self._fed_draft
        if fed > 0:
            kept = [min(a, fed) for a in verification.accepted]
            forget = torch.tensor(
                [fed - k for k in kept], dtype=torch.long, device=self.state.logits.device
            )
            self.draft.rewind(self.state, forget)
            for row, k in zip(verification.rows, kept):
                self._seen[row] -= fed - k
            self._fed_draft = 0
        self._steps += 1
        if self._steps % 32 == 0:  # squeeze out the holes catch-ups and rewinds leave
            self.draft.compact(self.state)

    def finish(self, outputs: list[list[int]]) -> None:
        self.state = None
