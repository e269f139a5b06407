"""``decodekit compare`` end to end on a tiny random checkpoint with the embedded tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from decodekit.cli import main
from decodekit.compare import StrategyRun, markdown_table, read_prompts
from decodekit.errors import InputError
from decodekit.models import embedded_model_path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_model_path("stdlib-code"), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.5,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_compare_prints_a_table_and_writes_a_plot(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "def add(a, b):", "reference": "    return a + b"}) + "\n\n"
        + json.dumps({"prompt": "import os"}) + "\n"
    )
    plot = tmp_path / "out.png"
    code = main([
        "compare", "--input", str(prompts), "--model", str(checkpoint), "--num-beams", "4",
        "--num-groups", "2", "--max-new-tokens", "4", "--plot", str(plot),
    ])
    assert code == 0
    table = capsys.readouterr().out
    for name in ("beam", "dbs-hamming", "dbs-cumulative", "dbs-ngram", "dbs-embedding", "sample"):
        assert f"| {name} |" in table
    assert "oracle BLEU" in table and "time / beam" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_prompt_files_are_input_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(InputError, match="line 1"):
        read_prompts(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="not JSON"):
        read_prompts(str(bad))


def test_table_leaves_out_columns_without_values():
    runs = [
        StrategyRun("beam", {"distinct_2": 0.1, "distinct_4": 0.2, "self_bleu": 90.0, "mean_logprob": -3.0,
                             "best_logprob": -1.0, "oracle_bleu": None, "oracle_chrf": None}, 2.0),
        StrategyRun("dbs", {"distinct_2": 0.5, "distinct_4": 0.6, "self_bleu": 20.0, "mean_logprob": -4.0,
                            "best_logprob": -1.5, "oracle_bleu": None, "oracle_chrf": None}, 2.2),
    ]
    table = markdown_table(runs, baseline="beam")
    assert "oracle" not in table
    assert table.splitlines()[-1] == "| dbs | 0.500 | 0.600 | 20.0 | -4.00 | -1.50 | 2.20 | 1.10 |"
