"""Test-time searches on scripted environments whose optimum the tests find by enumeration."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch

from decodekit.errors import ConfigError, InputError, NumericalError
from decodekit.model.scripted import ScriptedModel
from decodekit.search.sampling import Sampling
from decodekit.testtime.astar import AStarDecoding
from decodekit.testtime.deal import DeAL
from decodekit.testtime.mcts import MCTS
from decodekit.testtime.reward import OutcomeReward, ProcessReward
from decodekit.testtime.sampled import BestOfN, FirstFinishSearch
from decodekit.testtime.stepwise import DVTS, RewardBeamSearch
from decodekit.testtime.tree import Tree

EOS, PROMPT = 0, 9
LETTERS = {1: "a", 2: "b", 3: "c", 4: "\n", 5: "x"}


def decode(ids) -> str:
    return "".join(LETTERS.get(i, "") for i in ids)


def logprobs(weights: dict[int, float], vocab: int = 10) -> list[float]:
    total = sum(weights.values())
    return [math.log(weights[i] / total) if weights.get(i) else -math.inf for i in range(vocab)]


def step_env(depth: int = 3, can_merge: bool = True) -> ScriptedModel:
    """Steps are one letter then a newline; after ``depth`` steps EOS. The model prefers
    ``a`` (so likely paths are not the best ones)."""

    def next_logprobs(sequence):
        generated = sequence[1:]
        if generated and generated[-1] in (1, 2, 3):
            return logprobs({4: 1.0})
        if generated.count(4) == depth:
            return logprobs({EOS: 1.0})
        return logprobs({1: 0.6, 2: 0.25, 3: 0.15})

    return ScriptedModel(10, next_logprobs, eos_token_ids=(EOS,), can_merge=can_merge)


def token_env(depth: int = 3) -> ScriptedModel:
    """Letters only, ``depth`` of them, then EOS; the model prefers ``a``."""

    def next_logprobs(sequence):
        if len(sequence) - 1 == depth:
            return logprobs({EOS: 1.0})
        return logprobs({1: 0.7, 2: 0.2, 3: 0.1})

    return ScriptedModel(10, next_logprobs, eos_token_ids=(EOS,))


def table(depth: int, seed: int, steps: bool) -> dict[str, float]:
    rng = random.Random(seed)
    joiner = "\n" if steps else ""
    end = "\n" if steps else ""
    return {joiner.join(word) + end: rng.random() for word in itertools.product("abc", repeat=depth)}


def tree(model, seed: int = 0, max_new_tokens: int = 16, stop=()) -> Tree:
    return Tree(model, [PROMPT], decode, max_new_tokens=max_new_tokens, eos=(EOS,), stop=stop, seed=seed)


# -- the tree ---------------------------------------------------------------------------------


def test_fork_leaves_the_parent_as_it_was_and_children_share_its_prefix():
    model = step_env()
    t = tree(model)
    first = t.extend([t.root], boundary="\n")[0]
    assert first.text == "a\n" and first.finish == "step" and first.open
    again = t.extend([t.root, first, first], boundary="\n")
    assert again[0].tokens == first.tokens and again[0] is not first
    assert again[1].text == again[2].text == "a\na\n"
    assert t.root.open and first.open
    # one prefill, then one forward per token for all rows together
    assert model.calls[0] == 1 and t.compute.row_forwards == sum(model.calls[1:])


def test_first_tokens_budget_stop_after_and_release():
    t = tree(token_env(4))
    kids = t.extend([t.root] * 3, first=[1, 2, 3], max_tokens=1)
    assert [k.text for k in kids] == ["a", "b", "c"] and all(k.finish == "budget" for k in kids)
    longer = t.extend([kids[2]], max_tokens=2)[0]
    assert longer.text == "caa" and longer.parent is kids[2]
    done = t.extend(kids)  # greedy to the end: all finish at the same step
    assert [d.finish for d in done] == ["eos"] * 3 and [d.text for d in done] == ["aaaa", "baaa", "caaa"]
    t.release(kids[0])
    with pytest.raises(InputError):
        t.extend([kids[0]])
    with pytest.raises(InputError):
        t.extend([done[0]])


def test_stop_strings_cut_the_text_and_finish_the_branch():
    t = tree(step_env(), stop=["a\na"])
    out = t.extend([t.root])[0]
    assert out.finish == "stop" and out.text == "" and out.tokens == (1, 4, 1)


def test_non_finite_logits_raise_a_numerical_error():
    model = ScriptedModel(10, lambda seq: [math.nan] * 10 if len(seq) > 2 else logprobs({1: 1.0}), eos_token_ids=(EOS,))
    t = tree(model)
    with pytest.raises(NumericalError):
        t.extend([t.root], max_tokens=4)


def test_merged_and_separate_batches_give_the_same_search():
    reward = ProcessReward(_heuristic(table(3, 1, True), 3))
    results, calls = [], []
    for merge in (True, False):
        model = step_env(can_merge=merge)
        t = tree(model, seed=4)
        best, _ = AStarDecoding(k=3, parallel=2, sampler=Sampling()).run(t, reward, "")
        results.append((best.text, t.compute.row_forwards, t.compute.tokens_generated))
        # nodes of different states and depths, extended together
        t = tree(step_env(can_merge=merge))
        short, long = t.extend([t.root], max_tokens=1)[0], t.extend([t.root], max_tokens=3)[0]
        before = len(t.model.calls)
        ends = t.extend([short, long, short])
        calls.append(len(t.model.calls) - before)
        assert [e.text for e in ends] == ["a\na\na\n"] * 3 and [e.finish for e in ends] == ["eos"] * 3
    assert results[0] == results[1]
    assert calls[0] < calls[1]  # merged: one forward per token for all three


# -- best-of-N and First Finish ---------------------------------------------------------------


def test_best_of_n_returns_the_argmax_of_its_own_samples_and_votes_by_hand():
    rewards = table(3, 2, False)
    reward = OutcomeReward(lambda p, c: rewards[c])
    t = tree(token_env(), seed=7)
    best, samples = BestOfN(n=12, sampler=Sampling()).run(t, reward, "")
    assert len({s.text for s in samples}) > 3
    assert best.value == max(rewards[s.text] for s in samples)
    assert best is next(s for s in samples if s.value == best.value)
    t = tree(token_env(), seed=7)
    voted, same = BestOfN(n=12, sampler=Sampling(), vote="majority", answer=lambda text: text[-1]).run(t, reward, "")
    counts: dict[str, int] = {}
    for s in same:
        counts[s.text[-1]] = counts.get(s.text[-1], 0) + 1
    top = max(counts.values())
    winner = next(s.text[-1] for s in same if counts[s.text[-1]] == top)
    assert voted.text[-1] == winner and voted.value == max(s.value for s in same if s.text[-1] == winner)
    t = tree(token_env(), seed=7)
    weighted, same = BestOfN(n=12, sampler=Sampling(), vote="weighted", answer=lambda text: text[0]).run(t, reward, "")
    sums: dict[str, float] = {}
    for s in same:
        sums[s.text[0]] = sums.get(s.text[0], 0.0) + s.value
    assert weighted.text[0] == max(sums, key=sums.get)


def _length_env() -> ScriptedModel:
    """The first token (1-4, uniform) sets the length: 3 x first tokens of filler, then EOS."""

    def next_logprobs(sequence):
        generated = sequence[1:]
        if not generated:
            return logprobs({1: 1, 2: 1, 3: 1, 4: 1})
        if len(generated) >= 3 * generated[0]:
            return logprobs({EOS: 1.0})
        return logprobs({5: 1.0})

    return ScriptedModel(10, next_logprobs, eos_token_ids=(EOS,))


def test_first_finish_stops_at_the_first_finished_sample():
    n = 6
    everything = tree(_length_env(), seed=3, max_new_tokens=32)
    _, samples = BestOfN(n=n, sampler=Sampling()).run(everything, OutcomeReward(lambda p, c: 0.0), "")
    shortest = min(len(s.tokens) for s in samples)
    t = tree(_length_env(), seed=3, max_new_tokens=32)
    best, finished = FirstFinishSearch(n=n, sampler=Sampling()).run(t, None, "")
    assert len(best.tokens) == shortest
    assert best.tokens == next(s.tokens for s in samples if len(s.tokens) == shortest)
    # hand-built timings: every sample ran until the first finished, none longer
    assert t.compute.tokens_generated == n * shortest
    assert everything.compute.tokens_generated == sum(len(s.tokens) for s in samples)
    t = tree(_length_env(), seed=3, max_new_tokens=32)
    _, two = FirstFinishSearch(n=n, k=2, sampler=Sampling()).run(t, None, "")
    lengths = sorted(len(s.tokens) for s in samples)
    assert len(two) >= 2 and max(len(s.tokens) for s in two) == lengths[1]


# -- searches over steps ----------------------------------------------------------------------


def _heuristic(rewards: dict[str, float], depth: int, noise: float = 0.3, seed: int = 0):
    """An admissible process reward: the best reward reachable from a prefix, plus optimistic
    noise before the last step (exact for finished texts)."""
    rng = random.Random(seed)
    bonus: dict[str, float] = {}

    def h(prompt: str, prefix: str) -> float:
        best = max(v for k, v in rewards.items() if k.startswith(prefix))
        if prefix.count("\n") < depth:
            best += bonus.setdefault(prefix, noise * rng.random())
        return best

    return h


def test_astar_finds_the_optimum_and_expands_fewer_nodes_than_beam_search():
    """A* with an admissible reward always finds the optimum; sampled beam search needs more
    nodes to find it (the nodes of the first ``n`` that does, over a sweep of ``n``). Beam
    search is random, so a lucky draw can find it cheaply: compared as medians over seeds."""
    depth, astar, beam = 3, [], []
    for seed in range(8):
        rewards = table(depth, seed, True)
        optimum = max(rewards.values())
        reward = ProcessReward(_heuristic(rewards, depth, seed=seed))
        t = tree(step_env(depth), seed=seed)
        best, _ = AStarDecoding(k=3, expansion="top_k").run(t, reward, "")
        assert best.finished and best.value == optimum
        astar.append(t.compute.nodes_expanded)
        needed = math.inf
        for n in (3, 6, 12, 24, 48, 96):
            t = tree(step_env(depth), seed=seed)
            found, _ = RewardBeamSearch(n=n, beam_width=3, sampler=Sampling()).run(t, reward, "")
            if found.value == optimum:
                needed = t.compute.nodes_expanded
                break
        beam.append(needed)
    assert statistics.median(astar) < statistics.median(beam)


def test_astar_stops_at_its_token_budget():
    reward = ProcessReward(lambda p, c: -len(c))  # prefers short: never pops a finished node early
    t = tree(step_env(6), seed=0, max_new_tokens=40)
    best, _ = AStarDecoding(k=3, token_budget=10, sampler=Sampling()).run(t, reward, "")
    assert best.finished
    assert t.compute.tokens_generated - len(best.tokens) <= 10 + 3 * 2  # one last expansion may pass it


def test_reward_beam_keeps_the_best_and_dvts_keeps_one_per_subtree():
    rewards = table(3, 5, True)
    reward = ProcessReward(_heuristic(rewards, 3, noise=0.0))
    t = tree(step_env(), seed=1)
    best, finished = RewardBeamSearch(n=9, beam_width=3, sampler=Sampling()).run(t, reward, "")
    assert best.value == max(node.value for node in finished)
    t = tree(step_env(), seed=1)
    best, finished = DVTS(n=9, beam_width=3, sampler=Sampling()).run(t, reward, "")
    subtrees = {node.data["subtree"] for node in finished}
    assert subtrees <= {0, 1, 2} and best.value == max(node.value for node in finished)
    # each subtree ends with at most beam_width finished leaves of its one kept branch
    assert all(sum(n.data["subtree"] == s for n in finished) <= 3 for s in subtrees)


def test_outcome_rewards_rank_prefixes_by_their_greedy_completion():
    rewards = table(3, 6, True)
    reward = OutcomeReward(lambda p, c: rewards.get(c, 0.0))
    t = tree(step_env(), seed=2)
    best, finished = RewardBeamSearch(n=6, beam_width=3, sampler=Sampling()).run(t, reward, "")
    assert best.finished and best.value == rewards[best.text]
    assert best.value == max(n.value for n in finished)


# -- MCTS and DeAL ----------------------------------------------------------------------------


def test_mcts_converges_to_the_optimum_as_rollouts_grow():
    rewards = table(3, 11, False)
    # deceptive: the greedy path (aaa) is poor, the optimum has the least likely first letter
    rewards["aaa"], rewards["cbc"] = 0.2, 1.0
    reward = OutcomeReward(lambda p, c: rewards[c])
    found = []
    for rollouts in (1, 4, 16, 64):
        t = tree(token_env(), seed=0)
        best, _ = MCTS(rollouts=rollouts, k=3).run(t, reward, "")
        found.append(best.value)
    assert found == sorted(found) and found[0] == 0.2 and found[-1] == 1.0
    sequential_calls = len(t.model.calls)
    t = tree(token_env(), seed=0)
    best, completions = MCTS(rollouts=64, k=3, parallel=4).run(t, reward, "")
    assert best.value == 1.0 and len(completions) <= 64
    assert len(t.model.calls) < sequential_calls  # leaves expanded and rolled out in batches


def test_deal_commits_to_the_token_whose_lookahead_scores_best():
    reward = ProcessReward(lambda p, c: c.count("b") - 0.1 * c.count("a"))
    t = tree(token_env(3), seed=0)
    best, _ = DeAL(k=3, lookahead=2).run(t, reward, "")
    assert best.text == "bbb" and best.finished


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: BestOfN(n=0), "n"),
        (lambda: BestOfN(vote="most"), "vote"),
        (lambda: BestOfN(vote="majority"), "answer"),
        (lambda: BestOfN(sampler=Sampling(seed=1)), "sampler.seed"),
        (lambda: BestOfN(sampler=Sampling(n=2)), "sampler.n"),
        (lambda: BestOfN(sampler="hot"), "sampler"),
        (lambda: FirstFinishSearch(n=4, k=5), "k"),
        (lambda: RewardBeamSearch(n=8, beam_width=3), "n"),
        (lambda: RewardBeamSearch(boundary=""), "boundary"),
        (lambda: DVTS(max_steps=0), "max_steps"),
        (lambda: AStarDecoding(token_budget=0), "token_budget"),
        (lambda: AStarDecoding(expansion="all"), "expansion"),
        (lambda: MCTS(rollouts=True), "rollouts"),
        (lambda: MCTS(c_base=0), "c_base"),
        (lambda: MCTS(parallel=0), "parallel"),
        (lambda: DeAL(lookahead=0), "lookahead"),
    ],
)
def test_bad_search_settings_name_the_field(make, field):
    with pytest.raises(ConfigError) as caught:
        make().validate()
    assert caught.value.field == field


def test_trees_refuse_models_that_cannot_fork_and_too_long_budgets():
    class NoFork:
        max_length = None

    with pytest.raises(InputError):
        Tree(NoFork(), [1], decode, max_new_tokens=4)
    model = ScriptedModel(10, lambda s: logprobs({1: 1.0}), max_length=8)
    with pytest.raises(ConfigError) as caught:
        Tree(model, [1, 2, 3], decode, max_new_tokens=6)
    assert caught.value.field == "max_new_tokens"


def test_same_seed_same_search():
    reward = ProcessReward(_heuristic(table(3, 8, True), 3))
    runs = []
    for _ in range(2):
        t = tree(step_env(), seed=9)
        best, finished = DVTS(n=6, beam_width=3, sampler=Sampling()).run(t, reward, "")
        runs.append((best.tokens, [n.tokens for n in finished], t.compute.as_dict()["row_forwards"]))
    assert runs[0] == runs[1]
    torch.manual_seed(0)  # the global generator plays no part
    t = tree(step_env(), seed=9)
    best, _ = DVTS(n=6, beam_width=3, sampler=Sampling()).run(t, reward, "")
    assert best.tokens == runs[0][0]


def test_a_failing_model_becomes_a_named_model_error():
    from decodekit.errors import ModelError

    def broken(sequence):
        if len(sequence) > 2:
            raise RuntimeError("shape mismatch in layer 3")
        return logprobs({1: 1.0})

    t = tree(ScriptedModel(10, broken, eos_token_ids=(EOS,)))
    with pytest.raises(ModelError, match="shape mismatch"):
        t.extend([t.root], max_tokens=4)
