"""Research objectives on real transformers models: GNMT coverage against the model's own
teacher-forced attention, momentum decoding batch = single and greedy at alpha = 0."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit.errors import ConfigError
from decodekit.search.beam import BeamSearch
from decodekit.search.momentum import MomentumDecoding


def teacher_forced_coverage(model, prompt, tokens, beta, layer=-1, head=None):
    """GNMT's cp from one eager forward over the whole hypothesis (independent of the engine)."""
    start = model.generation_config.decoder_start_token_id or model.config.decoder_start_token_id
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[start, *tokens[:-1]]]), output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    maps = out.cross_attentions[layer][0]  # (heads, target, source)
    attention = maps.mean(0) if head is None else maps[head]
    return beta * float(attention.sum(0).clamp(min=1e-20, max=1.0).log().sum())


@pytest.mark.parametrize("build", [tm.bart, tm.t5])
@pytest.mark.parametrize("head", [None, 0])
def test_coverage_scores_are_gnmt_eq14_from_the_models_attention(build, head, one_thread):
    model = build(seed=3)
    decoder = decodekit.load(model)
    prompts = tm.prompts(4, 3)
    config = BeamSearch(num_beams=4, num_return_sequences=4, coverage_penalty=0.4, length_penalty=0.2, length_penalty_form="gnmt", coverage_head=head)
    together = decoder.generate(prompts, config, max_new_tokens=7)
    for prompt, result in zip(prompts, together):
        alone = decoder.generate(prompt, config, max_new_tokens=7)
        assert [s.token_ids for s in alone.sequences] == [s.token_ids for s in result.sequences]  # batch = single
        assert [s.score for s in alone.sequences] == pytest.approx([s.score for s in result.sequences], rel=1e-5, abs=1e-4)
        for sequence in result.sequences:
            lp = ((5 + len(sequence.token_ids)) / 6) ** 0.2
            expected = sequence.logprob / lp + teacher_forced_coverage(model, prompt, sequence.token_ids, 0.4, head=head)
            assert sequence.score == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert [s.score for s in result.sequences] == sorted((s.score for s in result.sequences), reverse=True)


def test_without_coverage_the_search_is_unchanged_and_a_strong_one_changes_the_nbest(one_thread):
    decoder = decodekit.load(tm.bart(seed=3))
    prompts = tm.prompts(1, 3)
    plain = decoder.generate(prompts, BeamSearch(num_beams=4, num_return_sequences=4), max_new_tokens=8)
    zero = decoder.generate(prompts, BeamSearch(num_beams=4, num_return_sequences=4, coverage_penalty=0.0), max_new_tokens=8)
    strong = decoder.generate(prompts, BeamSearch(num_beams=4, num_return_sequences=4, coverage_penalty=5.0), max_new_tokens=8)
    assert [[s.token_ids for s in r.sequences] for r in plain] == [[s.token_ids for s in r.sequences] for r in zero]
    assert [[s.token_ids for s in r.sequences] for r in plain] != [[s.token_ids for s in r.sequences] for r in strong]


def test_coverage_on_a_decoder_only_model_is_refused_before_any_model_call():
    decoder = decodekit.load(tm.llama())
    before = decoder.model.forward_count
    with pytest.raises(ConfigError) as error:
        decoder.generate([5, 6, 7], BeamSearch(num_beams=2, coverage_penalty=0.2), max_new_tokens=3)
    assert error.value.field == "coverage_penalty" and "encoder-decoder" in str(error.value)
    assert decoder.model.forward_count == before


def test_a_coverage_layer_the_model_lacks_is_named():
    decoder = decodekit.load(tm.bart())
    with pytest.raises(ConfigError) as error:
        decoder.generate([5, 6, 7], BeamSearch(num_beams=2, coverage_penalty=0.2, coverage_layer=7), max_new_tokens=3)
    assert error.value.field == "coverage_layer"


def test_coverage_requests_run_beside_other_requests(one_thread):
    """A coverage search decodes in a state of its own (eager attention); the plain requests
    submitted with it keep their own results."""
    decoder = decodekit.load(tm.bart(seed=5))
    prompts = tm.prompts(2, 4)
    config = BeamSearch(num_beams=3, coverage_penalty=0.5)
    alone = [decoder.generate(p, config, max_new_tokens=6).sequences[0].token_ids for p in prompts]
    greedy = [decoder.generate(p, max_new_tokens=6).sequences[0].token_ids for p in prompts]
    pending = [decoder.submit([p], config, max_new_tokens=6)[0] for p in prompts] + [decoder.submit([p], max_new_tokens=6)[0] for p in prompts]
    got = [p.result().sequences[0].token_ids for p in pending]
    assert got == alone + greedy


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2, tm.bart])
def test_momentum_is_batch_equals_single_and_greedy_without_resistance(build, one_thread):
    decoder = decodekit.load(build(seed=1))
    prompts = tm.prompts(7, 4)
    together = decoder.generate(prompts, MomentumDecoding(k=4, alpha=0.3), max_new_tokens=12)
    for prompt, result in zip(prompts, together):
        assert decoder.generate(prompt, MomentumDecoding(k=4, alpha=0.3), max_new_tokens=12).sequences[0].token_ids == result.sequences[0].token_ids
    plain = decoder.generate(prompts, max_new_tokens=12)
    zero = decoder.generate(prompts, MomentumDecoding(alpha=0.0), max_new_tokens=12)
    assert [r.sequences[0].token_ids for r in zero] == [r.sequences[0].token_ids for r in plain]


def test_momentum_repeats_fewer_ngrams_than_greedy_on_the_embedded_model():
    decoder = decodekit.load()
    prompts = ["def fibonacci(n):", "class Stack:", "import os\n\ndef main():"]

    def repeated(ids):
        grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
        return 1 - len(set(grams)) / max(1, len(grams))

    greedy = [repeated(r.sequences[0].token_ids) for r in decoder.generate(prompts, max_new_tokens=48)]
    momentum = [repeated(r.sequences[0].token_ids) for r in decoder.generate(prompts, "momentum", max_new_tokens=48)]
    assert sum(momentum) < sum(greedy)


def test_cli_momentum_and_coverage_flags():
    done = subprocess.run(
        [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--strategy", "momentum", "--alpha", "0.3", "--k", "3", "--max-new-tokens", "8", "--output-format", "jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["sequences"][0]["token_ids"]
    refused = subprocess.run(
        [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--strategy", "beam", "--coverage-penalty", "0.2", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert refused.returncode != 0 and "coverage_penalty" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2])
def test_adadec_without_lookahead_is_greedy_and_its_pauses_cost_forwards(build, one_thread):
    from decodekit.testtime import AdaDec

    decoder = decodekit.load(build(seed=2))
    prompt = tm.prompts(3, 1)[0]
    greedy = decoder.generate(prompt, max_new_tokens=10).sequences[0]
    same = decoder.search(prompt, AdaDec(threshold=0.0, lookahead=0), max_new_tokens=10)
    assert same.best.token_ids == greedy.token_ids
    assert same.best.logprob == pytest.approx(greedy.logprob, abs=1e-3)
    plain = decoder.search(prompt, AdaDec(threshold=1e3), max_new_tokens=10)
    assert plain.best.token_ids == greedy.token_ids and plain.compute.forwards <= len(greedy.token_ids) + 1
    searched = decoder.search(prompt, AdaDec(threshold=0.0, candidates=3, lookahead=3), max_new_tokens=10)
    assert searched.compute.forwards > plain.compute.forwards
    again = decoder.search(prompt, AdaDec(threshold=0.0, candidates=3, lookahead=3), max_new_tokens=10)
    assert again.best.token_ids == searched.best.token_ids


def test_learn_threshold_on_a_real_model_is_its_fits_crossing():
    import math

    from decodekit.testtime import learn_threshold

    decoder = decodekit.load()
    texts = ["def add(a, b):\n    return a + b\n", "import os\n\nprint(os.getcwd())\n", "class A:\n    def __init__(self):\n        self.x = 1\n"] * 3
    calibration = learn_threshold(decoder, texts)
    assert calibration.weight < 0
    assert calibration.threshold == pytest.approx((math.log(calibration.cutoff / (1 - calibration.cutoff)) - calibration.bias) / calibration.weight)
    assert calibration.positions == sum(len(decoder.encode(t)) - 1 for t in texts)


def test_cli_search_adadec_needs_no_reward():
    done = subprocess.run(
        [sys.executable, "-m", "decodekit", "search", "def f(x):", "--strategy", "adadec", "--threshold", "1.5", "--max-new-tokens", "8", "--output-format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["best"]["token_ids"]


def test_in_beam_rescoring_on_the_embedded_model_scores_finished_texts_by_the_mix():
    from decodekit.scoring.rerank import Rescoring

    decoder = decodekit.load()
    prompt = "def parse(line):"
    plain = BeamSearch(num_beams=4, num_return_sequences=4)
    seen = []

    def varied(prompt_text, text):  # a scorer on text: prefers varied characters
        seen.append(prompt_text)
        return len(set(text))

    zero = decoder.generate(prompt, BeamSearch(num_beams=4, num_return_sequences=4, rescore=Rescoring(varied, every=2, weight=0.0)), max_new_tokens=12)
    base = decoder.generate(prompt, plain, max_new_tokens=12)
    assert [s.token_ids for s in zero.sequences] == [s.token_ids for s in base.sequences]
    mixed = decoder.generate(prompt, BeamSearch(num_beams=4, num_return_sequences=4, rescore=Rescoring(varied, every=2, weight=0.5)), max_new_tokens=12)
    assert set(seen) == {prompt}
    for sequence in mixed.sequences:  # length_penalty 1: lp = length
        expected = 0.5 * sequence.logprob / len(sequence.token_ids) + 0.5 * varied(prompt, decoder.decode_text(sequence.token_ids))
        assert sequence.score == pytest.approx(expected, abs=1e-4)
    assert [s.token_ids for s in mixed.sequences] != [s.token_ids for s in base.sequences]


def _opera_tree(decoder, prompt, max_new_tokens):
    from decodekit.testtime.tree import Tree

    return Tree(decoder.model, prompt, lambda ids: " ".join(map(str, ids)), max_new_tokens=max_new_tokens, eos=decoder.model.eos_token_ids, attention="self")


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2])
def test_opera_without_penalty_or_retrospection_is_beam_search(build, one_thread):
    from decodekit.testtime import OPERA

    decoder = decodekit.load(build(seed=2))
    for prompt in tm.prompts(3, 2):
        opera = decoder.search(prompt, OPERA(num_beams=3, candidates=tm.VOCAB, alpha=0.0, rollback_threshold=10**6), max_new_tokens=8)
        beam = decoder.generate(prompt, BeamSearch(num_beams=3, num_return_sequences=3), max_new_tokens=8)
        assert [c.token_ids for c in opera.candidates] == [s.token_ids for s in beam.sequences]
        assert [c.reward for c in opera.candidates] == pytest.approx([s.score for s in beam.sequences], abs=1e-4)


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2])
def test_opera_penalties_are_the_models_own_attention_products(build, one_thread):
    """Every response token's recorded phi equals the one computed from a single eager forward
    over the whole sequence (last layer, max over heads, renormalised rows, scale 4)."""
    from decodekit.testtime import OPERA

    model = build(seed=4)
    decoder = decodekit.load(model)
    prompt = tm.prompts(9, 1)[0]
    best, _ = OPERA(num_beams=2, candidates=3, scale=4.0, warmup=0, rollback_threshold=10**6).run(_opera_tree(decoder, prompt, 10), None, "")
    sequence = prompt + list(best.tokens)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attention = model(input_ids=torch.tensor([sequence]), output_attentions=True).attentions[-1][0]
    finally:
        model.set_attn_implementation("sdpa")
    rows = attention.max(0).values.double()
    rows = rows / rows.sum(-1, keepdim=True)
    P = len(prompt)
    penalties = best.data["penalties"]
    assert len(penalties) >= 5
    for t, recorded in enumerate(penalties):
        window = rows[P : P + t + 1, P : P + t + 1]  # response rows 0..t over response columns
        logs = [math.log(1e-7) + float((4.0 * window[j:, j]).log().sum()) for j in range(t + 1)]
        assert recorded == pytest.approx(math.exp(min(max(logs), 80.0)), rel=1e-3)


def test_opera_retrospection_rolls_back_boundedly_and_deterministically(one_thread):
    from decodekit.testtime import OPERA

    decoder = decodekit.load(tm.llama(seed=6))
    prompt = tm.prompts(2, 1)[0]
    config = OPERA(num_beams=2, candidates=3, rollback_threshold=1, warmup=0)
    first, _ = config.run(_opera_tree(decoder, prompt, 12), None, "")
    again, _ = config.run(_opera_tree(decoder, prompt, 12), None, "")
    assert first.data["rollbacks"] > 0
    assert first.tokens == again.tokens and first.data["rollbacks"] == again.data["rollbacks"]
    assert first.data["rollbacks"] <= 12 * config.candidates
    plain, _ = OPERA(num_beams=2, candidates=3, rollback_threshold=10**6, warmup=0).run(_opera_tree(decoder, prompt, 12), None, "")
    assert plain.data["rollbacks"] == 0


def test_opera_is_refused_on_encoder_decoder_models_and_scripted_ones():
    from decodekit.api import Decoder
    from decodekit.model.scripted import ScriptedModel
    from decodekit.testtime import OPERA

    with pytest.raises(ConfigError) as error:
        decodekit.load(tm.bart()).search([5, 6, 7], OPERA(), max_new_tokens=4)
    assert "decoder-only" in str(error.value)
    with pytest.raises(ConfigError):
        Decoder(ScriptedModel(4, lambda s: [0.0] * 4)).search([1], OPERA(), max_new_tokens=2)
