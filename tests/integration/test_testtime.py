"""Test-time search on real transformers models: branches are exact, searches run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tm

import decodekit
from decodekit.engine.decoding import decode
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.sampling import Greedy, Sampling
from decodekit.testtime import (
    MCTS,
    BestOfN,
    ExecutableReward,
    OutcomeReward,
    RewardBeamSearch,
    Tree,
)

NEW = 12
TASKS = Path(__file__).parents[2] / "bench" / "tasks"


def _long_greedy(model, build_seed: int):
    """A prompt whose greedy completion runs the full length (so every branch can fork)."""
    for seed in range(50):
        prompt = tm.prompts(seed + 100 * build_seed, 1)[0]
        best = decode(model, [prompt], Greedy(), DecodeOptions(max_new_tokens=NEW))[0][0]
        if len(best.token_ids) == NEW and tm.EOS not in best.token_ids:
            return prompt, best
    raise AssertionError("no prompt with a full-length greedy completion")


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2, tm.qwen2, tm.bart])
def test_branches_forked_at_any_depth_continue_exactly_as_plain_greedy(build, one_thread):
    model = HFLanguageModel(build(seed=3))
    prompt, plain = _long_greedy(model, 3)
    tree = Tree(model, prompt, lambda ids: " ".join(map(str, ids)), max_new_tokens=NEW, eos=model.eos_token_ids)
    whole = tree.extend([tree.root])[0]
    assert list(whole.tokens) == plain.token_ids and whole.finish == "length"
    assert math.isclose(whole.logprob, plain.logprob, abs_tol=1e-4)
    node = tree.root  # in pieces of three tokens, each piece forking the last
    while node.open:
        node = tree.extend([node], max_tokens=3)[0]
    assert node.tokens == whole.tokens and math.isclose(node.logprob, whole.logprob, abs_tol=1e-4)
    # nodes of different depths and states, extended in one call
    short, deep = tree.extend([tree.root], max_tokens=2)[0], tree.extend([tree.root], max_tokens=7)[0]
    ends = tree.extend([deep, short, tree.root, short])
    assert all(end.tokens == whole.tokens for end in ends)
    assert all(math.isclose(end.logprob, whole.logprob, abs_tol=1e-4) for end in ends)


def test_sampled_branches_are_reproducible_and_share_the_prefill(one_thread):
    model = HFLanguageModel(tm.llama(seed=1))
    prompt = tm.prompts(4, 1)[0]
    runs = []
    for _ in range(2):
        before = model.forward_count
        tree = Tree(model, prompt, lambda ids: " ".join(map(str, ids)), max_new_tokens=NEW, eos=model.eos_token_ids, seed=5)
        kids = tree.extend([tree.root] * 6, sampler=Sampling(temperature=1.5))
        runs.append([k.tokens for k in kids])
        assert model.forward_count - before == tree.compute.forwards <= NEW + 1  # one prefill, one forward per step
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


@pytest.fixture(scope="module")
def embedded():
    return decodekit.load()


def test_search_on_the_embedded_model_with_an_executable_reward(embedded, one_thread):
    task = TASKS / "item_str"
    prompt = (task / "prompt.py").read_text(encoding="utf-8")
    reward = ExecutableReward.from_file(task / "tests.py")
    stop = ["\ndef ", "\nclass ", "\n#"]
    result = embedded.search(prompt, BestOfN(n=4), reward, max_new_tokens=24, stop=stop, seed=1)
    assert len(result.candidates) >= 1 and result.best.reward == max(c.reward for c in result.candidates)
    assert result.best.reward == reward.score(prompt, [result.best.text])[0]
    assert result.compute.tokens_generated >= result.compute.tokens_kept == len(result.best.token_ids)
    again = embedded.search(prompt, BestOfN(n=4), reward, max_new_tokens=24, stop=stop, seed=1)
    assert again.to_dict()["candidates"] == result.to_dict()["candidates"]
    beam = embedded.search(prompt, RewardBeamSearch(n=4, beam_width=2, max_steps=3), OutcomeReward(lambda p, c: -len(c)), max_new_tokens=24, stop=stop)
    assert beam.best.finish_reason in ("eos", "stop", "length")


def test_search_refuses_bad_settings_before_decoding(embedded):
    calls = embedded.model.forward_count
    with pytest.raises(decodekit.ConfigError) as caught:
        embedded.search("def f():", "mcts")
    assert caught.value.field == "reward"
    with pytest.raises(decodekit.ConfigError) as caught:
        embedded.search("def f():", "beam_search", lambda p, c: 0.0)
    assert caught.value.field == "strategy"
    with pytest.raises(decodekit.ConfigError) as caught:
        embedded.search("def f():", MCTS(rollouts=0), lambda p, c: 0.0)
    assert caught.value.field == "rollouts"
    with pytest.raises(decodekit.ConfigError) as caught:
        embedded.search("def f():", "best_of_n", 5)
    assert caught.value.field == "reward"
    assert embedded.model.forward_count == calls


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "decodekit", "search", *args], capture_output=True, text=True, timeout=300)


def test_cli_search_prints_the_best_program_and_json_with_compute():
    task = TASKS / "item_str"
    common = ["--prompt-file", str(task / "prompt.py"), "--reward", str(task / "tests.py"), "--max-new-tokens", "16", "--stop", "\ndef "]
    done = _cli(*common, "--strategy", "mcts", "--rollouts", "3", "--output-format", "json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert result["strategy"] == "mcts" and set(result["compute"]) >= {"forwards", "row_forwards", "reward_calls", "tokens_discarded", "wall_seconds"}
    text = _cli(*common, "--num-samples", "2", "--temperature", "0.7")
    assert text.returncode == 0 and text.stdout.startswith((task / "prompt.py").read_text(encoding="utf-8"))
    wrong = _cli(*common, "--strategy", "mcts", "--beam-width", "2")
    assert wrong.returncode == 2 and "--beam-width" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = _cli("def f():", "--strategy", "astar")
    assert missing.returncode == 2 and "--reward" in missing.stderr


def test_a_sequence_classifier_scores_prefixes_in_batches_as_one_by_one(one_thread):
    import torch
    import transformers

    from decodekit.testtime import ClassifierPRM

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tm.TEXT_VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=2, pad_token_id=tm.PAD)
    classifier = transformers.GPT2ForSequenceClassification(config).eval()
    prm = ClassifierPRM(classifier, tm.byte_tokenizer(), batch_size=3)
    prefixes = ["", " return x", " if x:\n        return 1\n", " pass", " x = 1\n    y = 2\n"]
    batched = prm.score("def f(x):\n   ", prefixes)
    alone = [prm.score("def f(x):\n   ", [p])[0] for p in prefixes]
    assert prm.forwards == 2 + len(prefixes)  # 5 prefixes in batches of 3, then one by one
    assert all(0.0 < b < 1.0 for b in batched) and max(abs(b - a) for b, a in zip(batched, alone)) < 1e-5
    assert len(set(round(b, 6) for b in batched)) > 1
    with pytest.raises(decodekit.ConfigError):
        ClassifierPRM(classifier, tm.byte_tokenizer(), label=2)


def test_a_search_too_wide_for_memory_is_refused_before_decoding(embedded):
    calls = embedded.model.forward_count
    with pytest.raises(decodekit.ConfigError) as caught:
        embedded.search("def f():", BestOfN(n=4096), lambda p, c: 0.0, max_new_tokens=1 << 19)
    assert caught.value.field == "n" and "GiB" in str(caught.value)
    assert embedded.model.forward_count == calls


def test_searches_from_several_threads_equal_the_same_searches_one_at_a_time(embedded):
    import threading

    from decodekit.testtime import AStarDecoding

    prompt, stop = "def area(width, height):\n    return", ["\ndef "]
    reward = OutcomeReward(lambda p, c: float("width" in c) + float("height" in c))
    jobs = [(BestOfN(n=4), 1), (MCTS(rollouts=3, parallel=2), 2), (AStarDecoding(k=2, token_budget=60), 3)]
    alone = [embedded.search(prompt, s, reward, max_new_tokens=16, stop=stop, seed=seed).to_dict() for s, seed in jobs]
    plain = embedded.generate(prompt, max_new_tokens=16).text
    together: dict = {}

    def run(i, config, seed):
        together[i] = embedded.search(prompt, config, reward, max_new_tokens=16, stop=stop, seed=seed).to_dict()

    threads = [threading.Thread(target=run, args=(i, s, seed)) for i, (s, seed) in enumerate(jobs)]
    for t in threads:
        t.start()
    also = embedded.generate(prompt, max_new_tokens=16).text  # the engine keeps serving meanwhile
    for t in threads:
        t.join(120)
    assert also == plain
    for i, expected in enumerate(alone):
        assert together[i]["candidates"] == expected["candidates"] and together[i]["best"] == expected["best"]


def test_a_reward_that_returns_no_number_is_named(embedded):
    with pytest.raises(decodekit.InputError, match="a number is needed"):
        embedded.search("def f():", BestOfN(n=2), lambda p, c: "good", max_new_tokens=4)
