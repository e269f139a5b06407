"""Classifier-free guidance (``guidance_scale``, ``negative_prompt``) against transformers 5's
own ``guidance_scale`` / ``negative_prompt_ids`` under greedy decoding, and against a
teacher-forced computation under beam search (transformers does not reorder its unconditional
cache with the beams)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit import BeamSearch, Sampling
from decodekit.errors import ConfigError


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2])
@pytest.mark.parametrize("scale", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("negative", [None, (7, 8, 9)])
def test_greedy_guidance_matches_transformers_generate(build, scale, negative, one_thread):
    model = build(seed=2)
    decoder = decodekit.load(model, use_generation_config=False)
    prompts = tm.prompts(5, 3)
    settings = {"guidance_scale": scale, "negative_prompt": negative, "max_new_tokens": 8}
    together = decoder.generate(prompts, **settings)
    for prompt, result in zip(prompts, together):
        extra = {} if negative is None else {"negative_prompt_ids": torch.tensor([list(negative)])}
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), guidance_scale=scale, do_sample=False, max_new_tokens=8, pad_token_id=tm.PAD,
                                 eos_token_id=tm.EOS, return_dict_in_generate=True, output_scores=True, **extra)
        expected = out.sequences[0, len(prompt) :].tolist()
        expected = expected[: expected.index(tm.EOS) + 1] if tm.EOS in expected else expected
        sequence = result.sequences[0]
        assert sequence.token_ids == expected
        assert sequence.token_logprobs == pytest.approx([float(s[0].log_softmax(-1)[t]) for s, t in zip(out.scores, expected)], abs=1e-4)
        assert decoder.generate(prompt, **settings).sequences[0].token_ids == sequence.token_ids  # batch = single


def guided_logprobs(model, prompt, unconditional, tokens, scale, renormalise):
    """Teacher-forced: each token's guided score, lp_u + scale (lp_c - lp_u), as it is or
    renormalised."""
    with torch.no_grad():
        cond = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        uncond = model(input_ids=torch.tensor([unconditional + tokens])).logits[0, len(unconditional) - 1 : -1].float().log_softmax(-1)
    guided = uncond + scale * (cond - uncond)
    if renormalise:
        guided = guided.log_softmax(-1)
    return [float(guided[t, token]) for t, token in enumerate(tokens)]


@pytest.mark.parametrize("negative", [None, (7, 8, 9)])
def test_beam_guidance_follows_each_beams_own_unconditional_twin(negative, one_thread):
    model = tm.llama(seed=3)
    decoder = decodekit.load(model, use_generation_config=False)
    prompt = tm.prompts(8, 1)[0]
    result = decoder.generate(prompt, BeamSearch(num_beams=3, num_return_sequences=3, length_penalty=0.0), max_new_tokens=7, guidance_scale=2.0, negative_prompt=negative)
    unconditional = list(negative) if negative is not None else prompt[-1:]
    for sequence in result.sequences:
        # beam search ranks by the guided log-softmax(raw) as it is (transformers' beam scores);
        # token_logprobs are the guided distribution's own log-probs
        assert sequence.score == pytest.approx(sum(guided_logprobs(model, prompt, unconditional, sequence.token_ids, 2.0, False)), abs=1e-3)
        assert sequence.token_logprobs == pytest.approx(guided_logprobs(model, prompt, unconditional, sequence.token_ids, 2.0, True), abs=1e-4)


def test_text_negative_prompt_sampling_and_refusals():
    decoder = decodekit.load()
    plain = decoder.generate("def add(a, b):", max_new_tokens=12).text
    guided = decoder.generate("def add(a, b):", max_new_tokens=12, guidance_scale=3.0, negative_prompt="import os").text
    assert guided != plain
    sampled = [decoder.generate("def add(a, b):", Sampling(seed=4), max_new_tokens=8, guidance_scale=2.0).text for _ in range(2)]
    assert sampled[0] == sampled[1]
    for settings, field in (({"guidance_scale": 0.0}, "guidance_scale"), ({"negative_prompt": (5,)}, "negative_prompt"), ({"guidance_scale": 2.0, "negative_prompt": ""}, "negative_prompt")):
        with pytest.raises(ConfigError) as error:
            decoder.generate("x", max_new_tokens=2, **settings)
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        decoder.generate("x", decodekit.Greedy(speculative=decodekit.Speculative("ngram")), max_new_tokens=2, guidance_scale=2.0)
    assert error.value.field == "guidance_scale"
    with pytest.raises(ConfigError) as error:
        decodekit.load(tm.bart()).generate([5, 6], max_new_tokens=2, guidance_scale=2.0)
    assert error.value.field == "guidance_scale"


def test_cli_guidance():
    done = subprocess.run(
        [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--guidance-scale", "2", "--negative-prompt", "import os", "--max-new-tokens", "6", "--output-format", "jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["sequences"][0]["token_ids"]) == 6
