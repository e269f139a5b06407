"""The trainer's quality measures: completed blocks, parse rates, draft agreement, the sweep."""

from __future__ import annotations

import json

import pytest

from decodekit.models import embedded_model_path
from decodekit.train.card import update_quality
from decodekit.train.quality import (
    completed_block,
    draft_acceptance,
    greedy_agreement,
    parse_samples,
    parses,
)
from decodekit.train.sweep import parse_shape, render_sweep


@pytest.mark.parametrize(
    ("prompt", "continuation", "ended", "block", "ok"),
    [
        # the block ends where a new top-level statement starts
        ("def f(x):", "\n    return x\n\ndef g():\n    pass\n", False, "def f(x):\n    return x\n\n", True),
        # cut at the token limit: the last line may be partial, so it goes
        ("def f(x):", "\n    return x +\n    y = (", False, "def f(x):\n    return x +\n", False),
        # ended by EOS: every line stays
        ("def f(x):", "\n    return x", True, "def f(x):\n    return x", True),
        # a comment at column 0 is inside the block
        ("def f(x):", "\n    a = 1\n# note\n    return a\nprint(1)\n", False, "def f(x):\n    a = 1\n# note\n    return a\n", True),
        # the prompt's own earlier top-level lines do not end it
        ("import os\n\ndef main():", "\n    print(os.getcwd())\nmain()\n", False, "import os\n\ndef main():\n    print(os.getcwd())\n", True),
        # no body before the next statement: not Python
        ("def f():", "\nx = 1\n", False, "def f():\n", False),
    ],
)
def test_completed_block(prompt, continuation, ended, block, ok):
    assert completed_block(prompt, continuation, ended) == block
    assert parses(block) is ok


def test_a_nul_byte_does_not_parse():
    assert not parses("x = 1\0")


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir, draft_dir = embedded_model_path("stdlib-code"), embedded_model_path("stdlib-code-draft")
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir), local_files_only=True)
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), local_files_only=True).eval()
    draft = AutoModelForCausalLM.from_pretrained(str(draft_dir), local_files_only=True).eval()
    return target_dir, draft_dir, tokenizer, target, draft


def test_parse_samples_check_the_block_they_report(pair):
    _, _, tokenizer, target, _ = pair
    samples = parse_samples(target, tokenizer, prompts=("def f(x):", "class A:"), new_tokens=24)
    assert [s["prompt"] for s in samples] == ["def f(x):", "class A:"]
    for s in samples:
        assert s["block"] == completed_block(s["prompt"], s["continuation"], s["ended"])
        assert s["parses"] is parses(s["block"])


TEXTS = ["def add(a, b):\n    return a + b\n", "import sys\n\nfor line in sys.stdin:\n    print(line.strip())\n"]


def test_a_model_agrees_with_itself_everywhere(pair):
    _, _, tokenizer, target, draft = pair
    same = greedy_agreement(target, target, tokenizer, TEXTS)
    assert same["agreement"] == 1.0
    other = greedy_agreement(target, draft, tokenizer, TEXTS)
    assert other["positions"] == same["positions"] > 20
    assert 0.0 <= other["agreement"] < 1.0


def test_draft_acceptance_is_read_from_speculative_decoding(pair):
    target_dir, draft_dir, *_ = pair
    result = draft_acceptance(target_dir, draft_dir, TEXTS, prompt_tokens=16, new_tokens=12)
    assert 0.0 <= result["acceptance_rate"] <= 1.0
    assert 0.0 < result["forwards_per_token"] <= 1.0
    assert result["prompts"] == 2


def test_sweep_shapes_are_checked():
    assert parse_shape("384x8") == (384, 8)
    for bad in ("384", "x8", "100x2", "256x0"):
        with pytest.raises(ValueError, match="--sweep-shapes"):
            parse_shape(bad)


def test_sweep_table_marks_the_best():
    row = {"parameters": 1000, "tokens_per_second": 50.0, "tokens_seen": 3000, "tokens_per_parameter_at_full_budget": 3.0}
    record = {"device": "cpu", "bf16": False, "sweep_minutes": 1, "target_minutes": 1, "sequence_length": 8, "batch_size": 2, "best": "32x1",
              "rows": [{**row, "hidden": 32, "layers": 1, "subset_nats_per_token": 4.0}, {**row, "hidden": 64, "layers": 2, "subset_nats_per_token": 4.5}]}
    table = render_sweep(record)
    assert "| 32x1 (best) | 1,000 |" in table and "| 64x2 | 1,000 |" in table


def test_the_card_gets_the_quality_sections_once(tmp_path):
    models = tmp_path / "models"
    parse = [{"prompt": "def f():", "parses": True}, {"prompt": "class A:", "parses": False}]
    for name in ("stdlib-code", "stdlib-code-draft"):
        (models / name).mkdir(parents=True)
        metrics = {"parse": parse}
        if name == "stdlib-code":
            metrics["draft_agreement"] = {"agreement": 0.5, "positions": 100, "max_tokens_per_file": 512}
            metrics["draft_acceptance"] = {"acceptance_rate": 0.4, "accepted_per_forward": 1.2, "forwards_per_token": 0.45,
                                           "num_tokens": 4, "prompt_tokens": 128, "new_tokens": 64}
        (models / name / "metrics.json").write_text(json.dumps(metrics))
    card = tmp_path / "MODEL.md"
    card.write_text("# Card\n\n## Held-out evaluation\n\nnumbers\n\n## Samples\n\nsamples\n")
    update_quality(models, card)
    first = card.read_text()
    update_quality(models, card)
    assert card.read_text() == first
    assert first.count("## Does the code parse") == 1 and first.count("## The draft against the target") == 1
    assert first.index("numbers") < first.index("## Does the code parse") < first.index("## Samples")
    assert "**1 / 2**" in first and "50.0%" in first and "40.0% of drafted tokens" in first


def test_the_sweep_trains_every_shape_and_names_the_best(tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from decodekit.train.__main__ import main

    work = tmp_path / "work"
    work.mkdir()
    model_dir = embedded_model_path("stdlib-code")
    AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).save_pretrained(str(work / "tokenizer"))
    shutil.copy(model_dir / "corpus.json", work / "corpus.json")  # the standard library's split
    save_file({"tokens": torch.arange(3, 3 + 600, dtype=torch.int32) % 50 + 3}, str(work / "train_tokens.safetensors"))
    main(["--stage", "sweep", "--work", str(work), "--sweep-shapes", "32x1", "64x1", "--sweep-minutes", "5",
          "--max-steps", "3", "--sequence-length", "16", "--batch-size", "2", "--target-minutes", "10"])
    record = json.loads((work / "sweep.json").read_text())
    assert [(r["hidden"], r["layers"]) for r in record["rows"]] == [(32, 1), (64, 1)]
    assert all(r["steps"] == 3 and r["tokens_seen"] == 3 * 2 * 16 for r in record["rows"])
    best = min(record["rows"], key=lambda r: r["subset_nats_per_token"])
    assert record["best"] == f"{best['hidden']}x{best['layers']}"
    out = capsys.readouterr().out
    assert f"--target-hidden {best['hidden']} --target-layers {best['layers']}" in out
