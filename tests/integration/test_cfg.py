"""Classifier-free guidance against transformers 5's own ``guidance_scale`` /
``negative_prompt_ids`` (in its core): the same tokens, and log-probs equal to its processed
scores renormalised."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit import ClassifierFreeGuidance
from decodekit.errors import ConfigError


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2])
@pytest.mark.parametrize("scale", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("negative", [None, (7, 8, 9)])
def test_cfg_matches_transformers_generate(build, scale, negative, one_thread):
    model = build(seed=2)
    decoder = decodekit.load(model, use_generation_config=False)
    prompts = tm.prompts(5, 3)
    config = ClassifierFreeGuidance(guidance_scale=scale, negative_prompt=negative)
    together = decoder.generate(prompts, config, max_new_tokens=8)
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
        alone = decoder.generate(prompt, config, max_new_tokens=8).sequences[0]  # batch = single
        assert alone.token_ids == sequence.token_ids


def test_a_text_negative_prompt_steers_away_and_settings_are_checked():
    decoder = decodekit.load()
    plain = decoder.generate("def add(a, b):", max_new_tokens=12).text
    guided = decoder.generate("def add(a, b):", ClassifierFreeGuidance(guidance_scale=3.0, negative_prompt="import os"), max_new_tokens=12).text
    assert guided != plain
    for bad, field in ((ClassifierFreeGuidance(guidance_scale=0.0), "guidance_scale"), (ClassifierFreeGuidance(negative_prompt=""), "negative_prompt"),
                       (ClassifierFreeGuidance(negative_prompt=(1.5,)), "negative_prompt"), (ClassifierFreeGuidance(sampler=decodekit.Sampling(n=2)), "sampler.n")):
        with pytest.raises(ConfigError) as error:
            decoder.generate("x", bad, max_new_tokens=2)
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        list(decoder.stream("x", ClassifierFreeGuidance(), max_new_tokens=2))
    assert error.value.field == "stream"


def test_cli_cfg():
    done = subprocess.run(
        [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--strategy", "cfg", "--guidance-scale", "2", "--negative-prompt", "import os", "--max-new-tokens", "6", "--output-format", "jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["sequences"][0]["token_ids"]) == 6
