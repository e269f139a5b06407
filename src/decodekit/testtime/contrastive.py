"""Contrastive search: pick, among the most likely tokens, the one whose hidden state is least
like the context's.

Su et al. (2022), "A Contrastive Framework for Neural Text Generation", eq. 5, as
transformers 4.x's ``generate(penalty_alpha=..., top_k=...)`` computed it (removed from its
core in transformers 5): at every step the ``top_k`` most likely tokens ``v`` are each run
through the model (one batched forward), and

    x_t = argmax_v  (1 - alpha) p(v | x_<t) - alpha max_j cos(h_v, h_j)

where ``h_v`` is the last hidden state of candidate ``v`` and ``h_j`` those of every earlier
position (the prompt's included; the decoder's for an encoder-decoder model). The chosen
candidate's forward already holds the next step's distribution, so a step costs one forward
of ``top_k`` rows. ``token_logprobs`` are the model's (raw) log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from decodekit import validation as v
from decodekit.testtime.reward import score
from decodekit.testtime.tree import Node


def degeneration_penalty(context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(positions, dim)`` context and ``(k, dim)`` candidate hidden states -> ``(k,)`` the
    largest cosine similarity of each candidate with any context position."""
    context = context / context.norm(dim=-1, keepdim=True)
    candidates = candidates / candidates.norm(dim=-1, keepdim=True)
    return (candidates @ context.T).max(-1).values


@dataclass(frozen=True)
class ContrastiveSearch:
    """``top_k``: candidates per step; ``penalty_alpha``: weight of the degeneration penalty
    (0: greedy)."""

    name: ClassVar[str] = "contrastive"
    top_k: int = 4
    penalty_alpha: float = 0.6

    needs_reward: ClassVar[bool] = False
    attention: ClassVar[str] = "hidden"
    takes_processors: ClassVar[bool] = True
    """The options' processors shape each step's distribution before the top-k (as in
    transformers); ``token_logprobs`` are then the processed distribution's."""

    def validate(self) -> None:
        v.integer("top_k", self.top_k, 1, 4096, "candidates per step")
        v.number("penalty_alpha", self.penalty_alpha, 0.0, 1.0)

    def run(self, tree, reward, prompt: str) -> tuple[Node, list[Node]]:
        context = tree.prompt_hidden()
        chain = getattr(tree, "processors", None)
        start = [int(tree.model.decoder_start_token_id)] if tree.model.is_encoder_decoder else list(tree.prompt)
        node = tree.root
        while node.open:
            logprobs = tree.logprobs(node)
            if chain is not None:  # the options' processors, on the logits, as transformers
                history = torch.tensor([start + list(node.tokens)])
                logprobs = chain(history, node._state.logits[node._row : node._row + 1].clone())[0].log_softmax(-1)
            probs = logprobs.exp()
            top, ids = torch.topk(probs, min(self.top_k, probs.shape[-1]))
            children = tree.children(node, ids.tolist())
            hidden = torch.stack([tree.hidden_of(child)[-1] for child in children])
            value = (1.0 - self.penalty_alpha) * top - self.penalty_alpha * degeneration_penalty(context, hidden)
            best = int(value.argmax())
            for i, child in enumerate(children):
                if i != best:
                    tree.release(child)
            tree.release(node)
            chosen = children[best]
            if chain is not None:
                token = int(ids[best])
                processed = float(logprobs[token])
                chosen.token_logprobs = (*chosen.token_logprobs[:-1], processed)
                chosen.logprob = node.logprob + processed
                for processor in chain.stateful:
                    processor.advance(None, torch.tensor([token]))
            node = chosen
            context = torch.cat([context, hidden[best : best + 1]])
        if reward is not None:
            score(tree, reward, prompt, [node])
        return node, [node] if reward is not None else []
