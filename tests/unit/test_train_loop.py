"""The embedded models' training loop: device and bfloat16 autocast settings, checkpoints and
resuming, and the command line's device checks (a CUDA run is the same code on another device)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from decodekit.train.__main__ import parse_arguments
from decodekit.train.loop import MODEL_SIZES, TrainSettings, build_model, train

SPECIAL = {"bos": 1, "eos": 2, "pad": 0}


def tiny(seed: int = 0):
    return build_model(MODEL_SIZES["tiny"], 50, SPECIAL, seed)


def stream() -> torch.Tensor:
    # a learnable stream: a repeating pattern, so a few steps lower the loss
    return torch.tensor([3, 4, 5, 6, 7, 8, 9, 10] * 64, dtype=torch.int32)


@pytest.mark.parametrize("bf16", [False, True])
def test_training_lowers_the_loss_and_resumes_from_its_checkpoint(tmp_path, bf16):
    settings = TrainSettings(sequence_length=16, batch_size=4, peak_lr=1e-2, warmup_steps=1, budget_seconds=600.0, max_steps=12, bf16=bf16)
    model = tiny()
    state = train(model, stream(), settings, tmp_path / "ckpt", tmp_path / "log.jsonl", resume=False)
    assert state.step == 12
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and log[-1]["step"] == 10
    assert log[-1]["last_loss"] < log[0]["last_loss"]  # the pattern is being learned
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())  # autocast keeps float32 weights
    # resuming continues the same run: its step count, and its weights rather than fresh ones
    longer = TrainSettings(**{**settings.__dict__, "max_steps": 14})
    again = tiny(seed=99)
    resumed = train(again, stream(), longer, tmp_path / "ckpt", tmp_path / "log.jsonl", resume=True)
    assert resumed.step == 14 and resumed.tokens_seen == 14 * 4 * 16
    assert resumed.last_loss < log[0]["last_loss"]


def test_device_must_be_one_torch_can_use(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--device", "not-a-device"])
    assert "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_arguments(["--device", "meta"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parse_arguments(["--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err
    args = parse_arguments(["--device", "cpu", "--bf16"])
    assert args.device == "cpu" and args.bf16


def test_a_literal_special_token_in_a_file_is_text():
    from transformers import AutoTokenizer

    from decodekit.models import DEFAULT_MODEL, embedded_model_path
    from decodekit.train.tokenizer import check_round_trip, encode_file

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path(DEFAULT_MODEL)), local_files_only=True)
    text = 'PAD, EOS = "<pad>", "<eos>"\nprint(EOS)\n'
    ids = encode_file(tokenizer, text)
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert not special & set(ids[1:-1])  # the literals are ordinary tokens
    check_round_trip(tokenizer, [text])
