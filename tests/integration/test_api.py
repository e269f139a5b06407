"""The public API with text: generate, stream, stop strings, load from a directory, the CLI."""

from __future__ import annotations

import json

import pytest
import tiny_models as tm

import decodekit
from decodekit import cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tm.text_model().save_pretrained(path, safe_serialization=True)
    tm.byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def decoder(checkpoint):
    return decodekit.load(str(checkpoint))


def test_load_from_directory_reads_safetensors(checkpoint, decoder):
    assert (checkpoint / "model.safetensors").is_file()
    assert not list(checkpoint.glob("*.bin"))
    assert decoder.tokenizer is not None and decoder.model.vocab_size == tm.TEXT_VOCAB


def test_generate_returns_typed_results(decoder):
    result = decoder.generate("def f(x):", max_new_tokens=12)
    best = result.best
    assert isinstance(best, decodekit.GeneratedSequence)
    assert best.text == decoder.tokenizer.decode(best.token_ids, skip_special_tokens=True)
    assert len(best.token_logprobs) == len(best.token_ids) and best.finish_reason in ("eos", "length")
    assert result.prompt_token_ids == decoder.tokenizer("def f(x):")["input_ids"]


def test_stream_yields_the_generated_text(decoder):
    events = list(decoder.stream("import os", max_new_tokens=10))
    full = decoder.generate("import os", max_new_tokens=10)
    assert "".join(e.text for e in events) == full.text
    assert [e.token_id for e in events if e.token_id is not None] == full.best.token_ids
    assert events[-1].finish_reason == full.best.finish_reason


def test_stream_sampling_rows(decoder):
    events = list(decoder.stream("x = ", decodekit.Sampling(n=2, seed=3), max_new_tokens=5))
    full = decoder.generate("x = ", decodekit.Sampling(n=2, seed=3), max_new_tokens=5)
    for row in range(2):
        assert "".join(e.text for e in events if e.row == row) == full.sequences[row].text


def test_stop_strings_end_and_are_cut(decoder):
    plain = decoder.generate("a", max_new_tokens=20).best
    assert len(plain.text) >= 4
    stop = plain.text[2:4]
    stopped = decoder.generate("a", max_new_tokens=20, stop=[stop]).best
    assert stopped.finish_reason == "stop"
    assert stopped.text == plain.text[: plain.text.find(stop)]
    assert plain.token_ids[: len(stopped.token_ids)] == stopped.token_ids


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("strategy", [decodekit.Greedy(), decodekit.Sampling(seed=4, top_k=8)])
def test_a_streamed_output_with_stop_strings_is_the_generated_one(keep, strategy):
    """Streaming never sends text that a stop string then cuts: text that may begin one is
    held back until it does not or the row ends. Stop strings taken from the unstopped output
    (spanning tokens, repeated pieces, one character), each alone and all together."""
    decoder = decodekit.load()
    prompt = "def read(path):"
    plain = decoder.generate(prompt, strategy, max_new_tokens=24, min_new_tokens=24).text
    stops = [plain[i : i + n] for i, n in ((3, 5), (9, 2), (14, 9), (len(plain) // 2, 1), (len(plain) - 4, 3))]
    for stop in [[s] for s in stops if s] + [[s for s in stops if s]]:
        settings = {"max_new_tokens": 24, "stop": stop, "include_stop_str_in_output": keep}
        want = decoder.generate(prompt, strategy, **settings).best
        events = list(decoder.stream(prompt, strategy, **settings))
        assert "".join(e.text for e in events) == want.text, stop
        assert events[-1].finish_reason == want.finish_reason


def test_cli_generate_jsonl(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["def ", "class A", "import"]))
    code = cli.main(["generate", "--model", str(checkpoint), "--input", str(prompts), "--output-format", "jsonl",
                     "--strategy", "beam", "--num-beams", "3", "--num-return-sequences", "2", "--max-new-tokens", "6"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in lines] == ["def ", "class A", "import"]
    decoder = decodekit.load(str(checkpoint))
    expected = decoder.generate("class A", decodekit.BeamSearch(num_beams=3, num_return_sequences=2), max_new_tokens=6)
    assert [s["token_ids"] for s in lines[1]["sequences"]] == [s.token_ids for s in expected.sequences]


def test_cli_text_from_argument_and_stdin(checkpoint, capsys, monkeypatch):
    assert cli.main(["generate", "--model", str(checkpoint), "def g", "--max-new-tokens", "5"]) == 0
    from_argument = capsys.readouterr().out
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("def g"))
    assert cli.main(["generate", "--model", str(checkpoint), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == from_argument
    assert from_argument.startswith("def g")


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--strategy", "beam", "--num-beams", "0"], "num_beams"),
        (["--strategy", "sample", "--top-p", "2"], "top_p"),
        (["--strategy", "beam", "--top-k", "5"], "--top-k"),
        (["--strategy", "magic"], "--strategy"),
    ],
)
def test_cli_bad_flags_exit_2_with_the_field(checkpoint, capsys, flags, field):
    assert cli.main(["generate", "--model", str(checkpoint), "x", *flags]) == 2
    assert field in capsys.readouterr().err


def test_cli_beam_sample_needs_a_beam_strategy(checkpoint, capsys):
    assert cli.main(["generate", "--model", str(checkpoint), "x", "--strategy", "greedy", "--beam-sample"]) == 2
    assert "--beam-sample" in capsys.readouterr().err


def test_stop_strings_end_beam_search_and_are_refused_by_diverse_beam_search(decoder):
    result = decoder.generate("x", decodekit.BeamSearch(num_beams=2), stop=["\n"], max_new_tokens=8)
    assert all("\n" not in s.text for s in result.sequences)
    with pytest.raises(decodekit.ConfigError, match="stop"):
        decoder.generate("x", decodekit.DiverseBeamSearch(num_beams=2, num_groups=2), stop=["\n"])
