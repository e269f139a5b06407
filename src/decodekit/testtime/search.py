"""Running a test-time search on a decoder: one prompt, one strategy, one reward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from decodekit import validation as v
from decodekit.engine.limits import check_rows
from decodekit.errors import ConfigError
from decodekit.testtime.adadec import AdaDec
from decodekit.testtime.astar import AStarDecoding
from decodekit.testtime.contrastive import ContrastiveSearch
from decodekit.testtime.deal import DeAL
from decodekit.testtime.mcts import MCTS
from decodekit.testtime.opera import OPERA
from decodekit.testtime.reward import as_reward
from decodekit.testtime.sampled import BestOfN, FirstFinishSearch
from decodekit.testtime.stepwise import DVTS, RewardBeamSearch
from decodekit.testtime.tree import Compute, Node, Tree

SEARCHES = {s.name: s for s in (BestOfN, FirstFinishSearch, RewardBeamSearch, DVTS, AStarDecoding, MCTS, DeAL, AdaDec, OPERA, ContrastiveSearch)}


@dataclass(frozen=True)
class Candidate:
    """A finished completion the search scored: its text (cut before a stop string), token
    ids, summed model log-probability, reward (None when the search ran without one) and
    finish reason (``eos``, ``stop``, ``length`` or ``cut``)."""

    text: str
    token_ids: list[int]
    logprob: float
    reward: float | None
    finish_reason: str
    token_logprobs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    """The answer of a search (``best``), every distinct finished completion it scored
    (``candidates``, best reward first) and what it spent (``compute``)."""

    prompt: str
    strategy: str
    best: Candidate
    candidates: list[Candidate]
    compute: Compute

    @property
    def text(self) -> str:
        return self.best.text

    def to_dict(self) -> dict:
        out = asdict(self)
        out["compute"] = self.compute.as_dict()
        return out


def _candidate(node: Node) -> Candidate:
    return Candidate(node.text, list(node.tokens), node.logprob, node.value, node.finish or "length", list(node.token_logprobs))


def _widest(strategy) -> tuple[str, int]:
    """The field that sets a search's widest batch of branches, and that width."""
    if isinstance(strategy, AStarDecoding | MCTS):
        return ("k" if strategy.k >= strategy.parallel else "parallel"), strategy.k * strategy.parallel
    if isinstance(strategy, DeAL):
        return "k", strategy.k * strategy.beams
    if isinstance(strategy, AdaDec):
        return "candidates", strategy.candidates
    if isinstance(strategy, ContrastiveSearch):
        return "top_k", strategy.top_k
    if isinstance(strategy, OPERA):
        return "candidates", strategy.num_beams * max(strategy.candidates, 2 * strategy.num_beams + 1)
    return "n", strategy.n


def check_memory(model, strategy, prompt_length: int, max_new_tokens: int) -> None:
    """Refuse a search whose widest batch would not fit in memory, before any model call."""
    field, rows = _widest(strategy)
    check_rows(model, rows, prompt_length + max_new_tokens + 8, max_new_tokens, field, getattr(strategy, field), "branches")


def processor_chain(model, prompt: list[int], options):
    """The options' processors for one row decoding ``prompt`` (its history layout: the prompt,
    or the decoder start token, then the generated tokens)."""
    import torch

    if model.is_encoder_decoder:
        start, encoder_ids = 1, torch.tensor([list(prompt)])
    else:
        start, encoder_ids = len(prompt), None
    chain = options.processors(start, options.eos(model.eos_token_ids), model.vocab_size, encoder_ids=encoder_ids)
    for processor in chain.stateful:
        processor.reset(1)
    return chain if len(chain) else None


def make_search(strategy):
    """A search config object from itself or its name."""
    if isinstance(strategy, str):
        if strategy not in SEARCHES:
            raise ConfigError("strategy", strategy, f"one of {', '.join(sorted(SEARCHES))}")
        strategy = SEARCHES[strategy]()
    if not isinstance(strategy, tuple(SEARCHES.values())):
        raise ConfigError("strategy", strategy, "a search config (BestOfN(...), RewardBeamSearch(...), DVTS(...), AStarDecoding(...), MCTS(...), FirstFinishSearch(...), DeAL(...), AdaDec(...), OPERA(...), ContrastiveSearch(...)) or its name")
    strategy.validate()
    return strategy


def run_search(
    decoder,
    prompt,
    strategy,
    reward=None,
    *,
    max_new_tokens: int = 128,
    stop: Sequence[str] = (),
    seed: int = 0,
    options=None,
) -> SearchResult:
    """Search for the best completion of ``prompt`` under ``reward`` (see
    :meth:`decodekit.Decoder.search`). Every setting is checked before any model call."""
    strategy = make_search(strategy)
    if reward is None:
        if strategy.needs_reward:
            raise ConfigError("reward", None, f"a reward: {strategy.name} ranks completions by one")
    else:
        reward = as_reward(reward)
    v.integer("max_new_tokens", max_new_tokens, 1, 1 << 20)
    stop = v.strings("stop", stop) if stop else ()
    seed = v.seed("seed", seed) or 0
    if getattr(strategy, "attention", None) == "self" and decoder.model.is_encoder_decoder:
        raise ConfigError("strategy", strategy.name, "a decoder-only model: its self-attention over the prompt and the response is what it reads")
    ids = decoder.encode(prompt)
    check_memory(decoder.model, strategy, len(ids), max_new_tokens)
    text = prompt if isinstance(prompt, str) else (decoder.decode_text(ids) or "")
    decode = decoder.decode_text if decoder.tokenizer is not None else (lambda tokens: " ".join(map(str, tokens)))
    tree = Tree(
        decoder.model, ids, decode, max_new_tokens=max_new_tokens, eos=decoder.model.eos_token_ids,
        stop=stop, seed=seed, lock=decoder.engine.exclusive, attention=getattr(strategy, "attention", None),
    )
    if options is not None and getattr(strategy, "takes_processors", False):
        tree.processors = processor_chain(decoder.model, ids, options)
    best, scored = strategy.run(tree, reward, text)
    compute = tree.finish(best)
    unique: dict[tuple[int, ...], Node] = {}
    for node in [*scored, best]:
        unique.setdefault(node.tokens, node)
    candidates = sorted(unique.values(), key=lambda n: -(n.value if n.value is not None else float("-inf")))
    return SearchResult(text, strategy.name, _candidate(best), [_candidate(n) for n in candidates], compute)
