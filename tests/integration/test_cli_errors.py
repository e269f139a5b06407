"""The command line on broken input: one line on stderr naming the problem, never a traceback;
exit code 2 for a bad setting or input, 1 for a failure while running. Jobs from JSONL files
keep going past bad lines (``--on-error skip``) and resume without losing or repeating a line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models as tm

import decodekit
from decodekit.cli import main
from decodekit.errors import InputError


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decodekit", *args], input=stdin, capture_output=True, timeout=300)


def no_traceback(process) -> str:
    err = process.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["generate", "x", "--strategy", "sample", "--temperature", "1e-45"], 2, "temperature"),
        (["generate", "x", "--device", "cuda"], 2, "device"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(args, code, says):
    process = run(*args)
    err = no_traceback(process)
    assert process.returncode == code and says in err
    assert len(err.strip().splitlines()) == 1


def test_binary_stdin_is_an_input_error():
    process = run("generate", stdin=b"\xff\xfe\x00abc")
    assert process.returncode == 2 and "not UTF-8" in no_traceback(process)


def test_missing_input_and_directories_are_input_errors(tmp_path, capsys):
    for path, says in (("/nonexistent/prompts.jsonl", "no such file"), (str(tmp_path), "not a file")):
        assert main(["generate", "--input", path]) == 2
        assert says in capsys.readouterr().err


def test_a_job_skips_bad_lines_with_error_records_and_resumes(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(
        b'{"prompt": "def f(x):"}\n{"prompt": \n\xff\xfe\n{"prompt": "class A:", "id": "a7"}\n'
        b'{"nope": 1}\n{"prompt": "\\ud800"}\n{"prompt": "import os"}\n'
    )
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(source), "--output", str(out), "--on-error", "skip", "--max-new-tokens", "3"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [("error" in r) for r in records] == [False, True, True, False, True, True, False]
    assert records[3]["id"] == "a7" and records[3]["prompt"] == "class A:"
    # an interrupted job: the last record was cut mid-write; --resume completes it exactly once
    text = out.read_text()
    cut = text[: text.index('{"line": 7') + 20]
    out.write_text(cut)
    assert main(["generate", "--input", str(source), "--output", str(out), "--on-error", "skip", "--max-new-tokens", "3", "--resume"]) == 0
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 7]


def test_a_job_stops_at_the_first_bad_line_naming_it(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "a"}\nnot json\n{"prompt": "b"}\n')
    assert main(["generate", "--input", str(source), "--max-new-tokens", "2", "--output-format", "jsonl"]) == 1
    captured = capsys.readouterr()
    assert "line 2" in captured.err and "not JSON" in captured.err
    assert [json.loads(x)["line"] for x in captured.out.splitlines()] == [1]


def test_a_prompt_too_long_mid_file_costs_only_its_line(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": p}) for p in ["def f():", "x = 1 " * 3000, "class A:"]) + "\n")
    assert main(["generate", "--input", str(source), "--max-new-tokens", "2", "--output-format", "jsonl", "--on-error", "skip", "--batch-size", "3"]) == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert "error" in records[1] and "the model attends over 4096, so a prompt may have at most 4095" in records[1]["error"]
    assert "sequences" in records[0] and "sequences" in records[2]


def test_broken_checkpoints_are_input_errors(tmp_path):
    model = tm.gpt2()
    good = tmp_path / "good"
    model.save_pretrained(good)
    assert decodekit.load(good).generate([3, 4], max_new_tokens=2).best.token_ids
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((good / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{not json")
    (bad_config / "model.safetensors").write_bytes(weights)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (unknown / "model.safetensors").write_bytes(weights)
    for path, says in ((pickled, "pickle"), (truncated, "could not be loaded"), (bad_config, "config.json"), (unknown, "config.json")):
        with pytest.raises(InputError, match=says):
            decodekit.load(path)
    process = run("generate", "x", "--model", str(truncated))
    assert process.returncode == 2 and "could not be loaded" in no_traceback(process)
