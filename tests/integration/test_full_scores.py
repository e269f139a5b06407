"""``output_scores`` / ``output_logits``: every returned sequence carries, per token, the
processed distribution it was scored under and the model's raw logits, checked against
transformers' ``generate(output_scores=True, output_logits=True)`` and its own processors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models as tm
import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

import decodekit
from decodekit import BeamSearch
from decodekit.errors import ConfigError


@pytest.mark.parametrize("build", [tm.gpt2, tm.llama, tm.bart])
def test_greedy_scores_and_logits_equal_generates(build, one_thread):
    model = build(seed=1)
    decoder = decodekit.load(model, use_generation_config=False)
    for prompt in tm.prompts(3, 2):
        seq = decoder.generate(prompt, max_new_tokens=6, repetition_penalty=1.3, output_scores=True, output_logits=True).sequences[0]
        out = tm.hf_generate(model, [prompt], max_new_tokens=6, repetition_penalty=1.3, do_sample=False, output_logits=True)
        steps = len(seq.token_ids)
        assert seq.logits.shape == seq.scores.shape == (steps, model.config.vocab_size)
        for t in range(steps):
            assert seq.logits[t] == pytest.approx(out.logits[t][0].float(), abs=1e-4)
            assert seq.scores[t] == pytest.approx(out.scores[t][0].float().log_softmax(-1), abs=1e-4)  # generate's processed logits, renormalised
        assert [float(seq.scores[t, tok]) for t, tok in enumerate(seq.token_ids)] == pytest.approx(seq.token_logprobs, abs=1e-4)


@pytest.mark.parametrize("build", [tm.gpt2, tm.bart])
def test_beam_paths_carry_transformers_beam_scores(build, one_thread):
    """Along each hypothesis' own path: log-softmax of the raw logits, then transformers' own
    repetition-penalty and no-repeat processors (the beam-search chain), renormalised."""
    model = build(seed=2)
    decoder = decodekit.load(model, use_generation_config=False)
    prompt = tm.prompts(6, 1)[0]
    result = decoder.generate(prompt, BeamSearch(num_beams=3, num_return_sequences=3), max_new_tokens=6, repetition_penalty=1.2, no_repeat_ngram_size=2, output_scores=True, output_logits=True)
    chain = [RepetitionPenaltyLogitsProcessor(1.2), NoRepeatNGramLogitsProcessor(2)]
    start = [model.generation_config.decoder_start_token_id] if model.config.is_encoder_decoder else list(prompt)
    for seq in result.sequences:
        history = torch.tensor([start + seq.token_ids])
        for t in range(len(seq.token_ids)):
            expected = seq.logits[t : t + 1].log_softmax(-1)
            for processor in chain:
                expected = processor(history[:, : len(start) + t], expected)
            expected = expected.log_softmax(-1)
            finite = torch.isfinite(expected[0])
            assert torch.equal(finite, torch.isfinite(seq.scores[t]))
            assert seq.scores[t][finite] == pytest.approx(expected[0][finite], abs=1e-4)
        assert [float(seq.scores[t, tok]) for t, tok in enumerate(seq.token_ids)] == pytest.approx(seq.token_logprobs, abs=1e-4)


def test_a_constraints_mask_is_in_the_scores():
    decoder = decodekit.load()
    seq = decoder.generate("color: ", constraint=decodekit.constraints.Catalog(["red", "green"]), max_new_tokens=6, output_scores=True).sequences[0]
    allowed = torch.isfinite(seq.scores[0]).sum()
    assert 0 < allowed < 10  # only the catalog's first tokens are possible at step 0
    assert [float(seq.scores[t, tok]) for t, tok in enumerate(seq.token_ids)] == pytest.approx(seq.token_logprobs, abs=1e-4)


def test_refusals_and_json():
    decoder = decodekit.load()
    for strategy, extra in ((decodekit.DoLa(), {}), (decodekit.ContextAwareDecoding(context="a"), {}), (None, {"guidance_scale": 2.0})):
        with pytest.raises(ConfigError) as error:
            decoder.generate("x", strategy, max_new_tokens=2, output_scores=True, **extra)
        assert error.value.field == "output_scores"
    plain = decoder.generate("x", max_new_tokens=2).sequences[0].to_dict()
    assert "scores" not in plain and "logits" not in plain
    done = subprocess.run([sys.executable, "-m", "decodekit", "generate", "x", "--max-new-tokens", "2", "--output-logits", "--output-format", "jsonl"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)["sequences"][0]
    assert len(record["logits"]) == len(record["token_ids"]) and "scores" not in record


@pytest.mark.parametrize("build", [tm.gpt2, tm.llama])
def test_prompt_logprobs_are_the_models_own_forward(build, one_thread):
    """Each prompt token's log-prob and alternatives equal the log-softmax of the model's own
    forward over the prompt; the first token has none; encoder-decoder models are refused."""
    model = build(seed=2)
    decoder = decodekit.load(model, use_generation_config=False)
    prompt = tm.prompts(1, 9)[0]
    got = decoder.prompt_logprobs(prompt, top=3)
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
    assert got[0] is None and len(got) == len(prompt)
    for i in range(1, len(prompt)):
        value, top = got[i]
        assert value == pytest.approx(want[i - 1, prompt[i]].item(), abs=1e-5)
        values, ids = want[i - 1].topk(3)
        assert [t for t, _ in top] == ids.tolist() and [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-5)
    with pytest.raises(ConfigError, match="logprobs"):
        decodekit.load(tm.bart(seed=1), use_generation_config=False).prompt_logprobs(prompt)
