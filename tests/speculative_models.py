"""Scripted models and helpers shared by the speculative decoding tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from decodekit.model.scripted import ScriptedModel
from decodekit.speculative import DraftModelConfig, Speculative, make_proposer
from decodekit.speculative.draft_model import DraftModelProposer


def markov_model(vocab: int, seed: int, eos: int = 0, sharp: float = 2.0) -> ScriptedModel:
    """A second-order Markov chain with peaked rows, so continuations repeat."""
    g = torch.Generator().manual_seed(seed)
    table = (torch.randn((vocab, vocab, vocab), generator=g) * sharp).log_softmax(-1)

    def next_logprobs(sequence):
        return table[sequence[-2] if len(sequence) > 1 else 1, sequence[-1]]

    return ScriptedModel(vocab, next_logprobs, eos_token_ids=(eos,))


def _proposer(speculation, model):
    if isinstance(speculation, tuple):
        return Speculative("draft"), DraftModelProposer(
            DraftModelConfig(num_tokens=3), speculation[1]
        )
    return speculation, make_proposer(speculation, model)


def _exact_distribution(model, prompt, length, warp):
    """Probability of every continuation of at most ``length`` tokens (EOS ends one early)."""
    out: dict[tuple[int, ...], float] = {}

    def expand(generated: tuple[int, ...], prob: float) -> None:
        if len(generated) == length or (generated and generated[-1] in model.eos_token_ids):
            out[generated] = prob
            return
        p = warp(torch.as_tensor(model.next_logprobs(tuple(prompt) + generated))[None]).softmax(-1)[
            0
        ]
        for token in range(model.vocab_size):
            if p[token] > 0:
                expand(generated + (token,), prob * float(p[token]))

    expand((), 1.0)
    return out


def chisquare_pvalue(samples, exact: dict, n: int, reference: dict | None = None) -> float:
    """Chi-square p-value of ``samples`` (token-id sequences, ``n`` of them) against ``exact``
    (sequence -> probability; ``reference`` instead, if given, over ``exact``'s outcomes).
    Rare outcomes (expected < 5) are pooled, as chi-square needs; float32 probabilities are
    renormalised."""
    from collections import Counter

    from scipy.stats import chisquare

    seen = Counter(tuple(s) for s in samples)
    assert sum(seen.values()) == n
    keys = sorted(exact)
    expected = [exact[k] * n for k in keys]
    against = expected if reference is None else [reference.get(k, 0.0) * n for k in keys]
    observed = [seen.get(k, 0) for k in keys]
    big = [i for i, e in enumerate(expected) if e >= 5]
    rest = [i for i in range(len(keys)) if i not in big]
    f_obs = [observed[i] for i in big] + ([sum(observed[i] for i in rest)] if rest else [])
    f_exp = [against[i] for i in big] + ([sum(against[i] for i in rest)] if rest else [])
    f_exp = [max(e, 1e-9) * n / sum(f_exp) for e in f_exp]
    return float(chisquare(f_obs, f_exp).pvalue)


def tiny_llama(seed: int, vocab: int = 48, hidden: int = 32, layers: int = 2, std: float = 0.25):
    """A random Llama whose large initialisation makes it repeat itself, so drafts get accepted."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=std,
        bos_token_id=1,
        eos_token_id=vocab - 1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def motif_prompts(count: int, motif: tuple[int, int], length: tuple[int, int], vocab: int = 48) -> list[list[int]]:
    """``count`` prompts that repeat a random motif (``motif``: its length range, ``length``:
    the prompt's), so a suffix or a draft has something to match."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        tokens = torch.randint(2, vocab - 1, (int(torch.randint(*motif, (1,), generator=g)),), generator=g).tolist()
        out.append((tokens * 4)[: int(torch.randint(*length, (1,), generator=g))])
    return out
