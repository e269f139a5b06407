"""The same guarantees on a CUDA device: parity with transformers ``generate`` (greedy and
beam search, float32 and bfloat16), lossless speculation and batch = single. Skipped where no
GPU is present; ``bash bench/device_check.sh`` runs it on one (``DECODEKIT_TEST_DEVICE=cpu``
runs the same tests on the CPU).

On CUDA the adapter runs the model's own forward (the lean steps are CPU-only), so these
tests check the adapter's cache, masks and positions on the device the model lives on.
"""

from __future__ import annotations

import os

import pytest
import tiny_models as tm
import torch

from decodekit.engine import decode
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.beam import BeamSearch
from decodekit.search.sampling import Greedy, Sampling
from decodekit.speculative import Speculative, SuffixConfig

DEVICE = os.environ.get("DECODEKIT_TEST_DEVICE", "cuda")  # "cpu" checks these tests themselves
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")

MAX_NEW = 12


def _on_cuda(name: str, dtype=torch.float32):
    return tm.BUILDERS[name]().to(DEVICE, dtype)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "bart", "t5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_and_beam_search_match_generate_on_cuda(name, dtype):
    hf = _on_cuda(name, dtype)
    prompts = tm.prompts(3, 4, low=2, high=9)
    ours = decode(HFLanguageModel(hf), prompts, Greedy(), DecodeOptions(max_new_tokens=MAX_NEW))
    theirs = tm.generated_part(hf, tm.hf_generate(hf, prompts, max_new_tokens=MAX_NEW, do_sample=False), prompts)
    assert [h[0].token_ids for h in ours] == theirs
    beams = BeamSearch(num_beams=4, num_return_sequences=2)
    ours = decode(HFLanguageModel(hf), prompts, beams, DecodeOptions(max_new_tokens=MAX_NEW))
    out = tm.hf_generate(hf, prompts, max_new_tokens=MAX_NEW, do_sample=False, num_beams=4, num_return_sequences=2)
    theirs = tm.generated_part(hf, out, prompts)
    assert [h.token_ids for hyps in ours for h in hyps] == theirs


@pytest.mark.parametrize("config", [SuffixConfig(), SuffixConfig(tree=True)])
def test_speculation_is_lossless_on_cuda(config):
    hf = _on_cuda("llama")
    model = HFLanguageModel(hf)
    prompts = [p * 3 for p in tm.prompts(5, 4, low=3, high=6)]  # repeats for the suffix tree
    options = DecodeOptions(max_new_tokens=24)
    plain = decode(model, prompts, Greedy(), options)
    fast = decode(model, prompts, Greedy(speculative=Speculative("suffix", config)), options)
    assert [h[0].token_ids for h in fast] == [h[0].token_ids for h in plain]


def test_a_seeded_request_is_the_same_alone_and_in_a_batch_on_cuda():
    model = HFLanguageModel(_on_cuda("gpt2"))
    prompts = tm.prompts(9, 3, low=3, high=8)
    options = DecodeOptions(max_new_tokens=MAX_NEW)
    together = decode(model, prompts, Sampling(seed=5, top_p=0.9), options)
    alone = decode(model, prompts[1:2], Sampling(seed=5, top_p=0.9), options)
    assert together[1][0].token_ids == alone[0][0].token_ids
