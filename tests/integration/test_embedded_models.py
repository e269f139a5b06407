"""The embedded models load offline, tokenize exactly, and match their model card."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decodekit.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    embedded_model_path,
    held_out_files,
    stdlib_root,
)
from decodekit.train.evaluate import SUBSET_MAX_TOKENS, held_out_loss, subset_paths

TARGET, DRAFT = EMBEDDED_MODELS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(embedded_model_path(DEFAULT_MODEL)), local_files_only=True)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        name: AutoModelForCausalLM.from_pretrained(str(embedded_model_path(name)), local_files_only=True).eval()
        for name in EMBEDDED_MODELS
    }


def card_metrics(name: str) -> dict:
    return json.loads((embedded_model_path(name) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def validation_texts() -> dict[str, str]:
    """Validation sources, or a skip when this interpreter's stdlib is not the corpus's."""
    manifest = json.loads((embedded_model_path(DEFAULT_MODEL) / "corpus.json").read_text())
    texts = {}
    for path in held_out_files():
        source = stdlib_root() / path
        if not source.is_file():
            pytest.skip(f"{path} is not in this interpreter's standard library")
        text = source.read_text(encoding="utf-8")
        if hashlib.sha1(text.encode("utf-8")).hexdigest() != manifest["validation_sha1"][path]:
            pytest.skip(f"{path} differs from the file the models were evaluated on")
        texts[path] = text
    return texts


def test_unknown_model_name_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="stdlib-code-draft"):
        embedded_model_path("gpt-5")


def test_both_models_load_offline_with_shared_tokenizer(models, tokenizer):
    for name in EMBEDDED_MODELS:
        directory = embedded_model_path(name)
        assert (directory / "model.safetensors").is_file()
        config = models[name].config
        assert config.max_position_embeddings >= 2048
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        )
        assert config.vocab_size == len(tokenizer)
        own = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        assert own.get_vocab() == tokenizer.get_vocab()


def test_parameter_counts(models):
    target = sum(p.numel() for p in models[TARGET].parameters())
    draft = sum(p.numel() for p in models[DRAFT].parameters())
    assert target >= 4_000_000
    assert draft * 4 <= target
    assert card_metrics(TARGET)["parameters"] == target


def test_tokenizer_round_trips_validation_files_exactly(tokenizer, validation_texts):
    paths = sorted(validation_texts)[:10]
    assert len(paths) == 10
    for path in paths:
        text = validation_texts[path]
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text, path


@pytest.fixture(scope="module")
def subset_losses(models, tokenizer, validation_texts):
    texts = [validation_texts[p] for p in subset_paths(list(validation_texts))]
    return {
        name: held_out_loss(models[name], tokenizer, texts, max_tokens=SUBSET_MAX_TOKENS)
        for name in EMBEDDED_MODELS
    }


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_held_out_loss_matches_the_model_card(name, subset_losses):
    card = card_metrics(name)["validation_subset"]
    measured = subset_losses[name]
    assert measured.tokens == card["tokens"]
    assert measured.nats_per_token == pytest.approx(card["nats_per_token"], rel=0.05)


def test_target_is_clearly_better_than_draft(subset_losses):
    assert subset_losses[TARGET].nats_per_token < subset_losses[DRAFT].nats_per_token - 0.05
    full = {name: card_metrics(name)["validation_full"]["nats_per_token"] for name in EMBEDDED_MODELS}
    assert full[TARGET] < full[DRAFT]


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_greedy_generation_from_def_is_non_empty(name, models, tokenizer):
    inputs = tokenizer("def ", return_tensors="pt")
    output = models[name].generate(**inputs, do_sample=False, max_new_tokens=16)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert continuation.strip()
