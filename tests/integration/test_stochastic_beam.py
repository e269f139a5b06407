"""Stochastic beam search on real transformers models: distinct samples, batch = single, CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import tiny_models as tm

import decodekit
from decodekit.search.stochastic_beam import StochasticBeamSearch


@pytest.mark.parametrize("build", [tm.llama, tm.gpt2, tm.bart])
def test_distinct_samples_whose_scores_are_their_model_logprobs(build, one_thread):
    decoder = decodekit.load(build(seed=2))
    prompts = tm.prompts(5, 3)
    config = StochasticBeamSearch(num_beams=5, seed=4)
    together = decoder.generate(prompts, config, max_new_tokens=6)
    for prompt, result in zip(prompts, together):
        alone = decoder.generate(prompt, config, max_new_tokens=6)
        assert [s.token_ids for s in alone.sequences] == [s.token_ids for s in result.sequences]  # batch = single
        seqs = [tuple(s.token_ids) for s in result.sequences]
        assert len(set(seqs)) == len(seqs) == 5
        scored = decoder.score([prompt] * len(seqs), [list(s) for s in seqs])
        for sequence, check in zip(result.sequences, scored):
            assert math.isclose(sequence.logprob, check.logprob, abs_tol=1e-3)
            assert 0.0 <= sequence.inclusion <= 1.0


def test_cli_strategy_stochastic_beam():
    done = subprocess.run(
        [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--strategy", "stochastic_beam", "--num-beams", "3", "--seed", "1", "--max-new-tokens", "6", "--output-format", "jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    import json

    record = json.loads(done.stdout)
    assert record["strategy"] == "stochastic_beam" and len(record["sequences"]) == 3
    assert all(s["inclusion"] is not None for s in record["sequences"])
