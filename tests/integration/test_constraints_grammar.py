"""Grammar constraints (llguidance) on a tiny random Llama with the embedded model's real
byte-level tokenizer: a corpus of 60 real-world-shaped JSON Schemas under greedy, sampling and
beam search (every finished output validates with ``jsonschema``), regex and Lark outputs,
padded vocabularies, the grammar cursor's fork and rollback, compile errors, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch
from constraint_models import tiny_llama, tokenizer

import decodekit
from decodekit.cli import main
from decodekit.constraints import Grammar, JsonSchema, Regex
from decodekit.errors import ConfigError

SCHEMAS = json.loads((Path(__file__).parents[1] / "fixtures" / "schemas" / "real_world.json").read_text())
STRATEGIES = [
    decodekit.Greedy(),
    decodekit.Sampling(n=2, seed=0),
    decodekit.BeamSearch(num_beams=2, num_return_sequences=2),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoder() -> decodekit.Decoder:
    return decodekit.load(tiny_llama(closing_bias=True), tokenizer())


def test_every_finished_output_of_60_json_schemas_validates(decoder):
    assert len(SCHEMAS) >= 50
    finished = total = 0
    for entry in SCHEMAS:
        for strategy in STRATEGIES:
            result = decoder.generate("data = ", strategy, constraint=JsonSchema(entry["schema"]), max_new_tokens=48)
            for sequence in result.sequences:
                total += 1
                # "length" only for an output whose last allowed token completed it (no room
                # left for EOS): then it must be valid too
                assert sequence.finish_reason in ("eos", "constraint", "length"), (entry["name"], sequence)
                if sequence.finish_reason == "eos":
                    finished += 1
                if sequence.finish_reason in ("eos", "length"):
                    jsonschema.validate(json.loads(sequence.text), entry["schema"])
                    assert sequence.constraint == {"name": "json_schema", "valid": True}
    assert finished >= 0.85 * total, f"only {finished} of {total} outputs finished"


def test_regex_outputs_fullmatch(decoder):
    pattern = r"[A-Z]{2}-[0-9]{3}(\.[a-z]+)?"
    for strategy in STRATEGIES:
        result = decoder.generate("id = ", strategy, constraint=Regex(pattern), max_new_tokens=16)
        for sequence in result.sequences:
            assert sequence.finish_reason == "eos"
            assert re.fullmatch(pattern, sequence.text), sequence.text


def test_lark_grammar_outputs_parse(decoder):
    lark = 'start: expr\nexpr: NUMBER | "(" expr OP expr ")"\nOP: "+" | "*"\nNUMBER: /[0-9]/'
    check = re.compile(r"[0-9]|\(.*\)")
    for strategy in STRATEGIES:
        result = decoder.generate("y = ", strategy, constraint=Grammar(lark), max_new_tokens=24)
        for sequence in result.sequences:
            if sequence.finish_reason == "eos":
                assert check.fullmatch(sequence.text) and sequence.text.count("(") == sequence.text.count(")")
            else:
                assert sequence.finish_reason == "constraint"


def test_padded_vocabulary_columns_are_never_allowed():
    model = tiny_llama(extra_vocab=64)  # the padded columns carry the largest logits
    decoder = decodekit.load(model, tokenizer())
    assert decoder.generate("x = ", "greedy", max_new_tokens=2).best.token_ids[0] >= len(tokenizer())
    for strategy in STRATEGIES:
        result = decoder.generate("x = ", strategy, constraint=Regex("[a-z]{1,6}"), max_new_tokens=10)
        for sequence in result.sequences:
            assert max(sequence.token_ids) < len(tokenizer()) and sequence.finish_reason == "eos"
            assert re.fullmatch("[a-z]{1,6}", sequence.text)


def test_budget_too_short_for_the_grammar_finishes_as_constraint(decoder):
    result = decoder.generate("x = ", "greedy", constraint=Regex("[0-9]{40}"), max_new_tokens=4)
    assert result.best.finish_reason == "constraint" and result.best.constraint["valid"] is False


def test_grammar_cursor_forks_and_rolls_back_like_a_fresh_matcher():
    tok = tokenizer()
    compiled = JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}).compile(tok, len(tok))
    ids = tok('{"a":12}', add_special_tokens=False)["input_ids"]
    vocab = len(tok)

    def mask_after(tokens):
        cursor = compiled.cursor(1)
        for token in tokens:
            cursor.advance(torch.tensor([token]), torch.tensor([True]))
        mask = torch.zeros((1, vocab), dtype=torch.bool)
        cursor.allowed(mask)
        return mask[0], bool(cursor.is_accepting()[0])

    cursor = compiled.cursor(1)
    for token in ids[:2]:
        cursor.advance(torch.tensor([token]), torch.tensor([True]))
    cursor.fork(torch.tensor([0, 0, 0]))  # three beams from one parent: independent copies
    cursor.advance(torch.tensor(ids[2:3] * 3), torch.tensor([True, False, True]))
    cursor.rollback(torch.tensor([0, 0, 2]))
    mask = torch.zeros((3, vocab), dtype=torch.bool)
    cursor.allowed(mask)
    assert torch.equal(mask[0], mask_after(ids[:3])[0])
    assert torch.equal(mask[1], mask_after(ids[:2])[0])
    assert torch.equal(mask[2], mask_after(ids[:1])[0])
    for token in ids[3:]:
        cursor.advance(torch.tensor([token] * 3), torch.tensor([True, False, False]))
    assert cursor.is_accepting().tolist() == [True, False, False]
    assert compiled.check(ids).valid and not compiled.check(ids[:-1]).valid


def test_processor_rollback_restores_the_masks_a_speculative_verifier_needs():
    from decodekit.constraints import constraint_processor

    tok = tokenizer()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    processor = constraint_processor(JsonSchema(schema), "greedy", tok, len(tok), (tok.eos_token_id,), 32)
    processor.reset(2)
    ids = tok('{"a":12}', add_special_tokens=False)["input_ids"]
    masks = []
    for token in ids:
        masks.append(torch.isfinite(processor(None, torch.zeros((2, len(tok))))))
        processor.advance(None, torch.tensor([token, token]))
    processor.rollback(3)  # the last three tokens were rejected
    assert torch.equal(torch.isfinite(processor(None, torch.zeros((2, len(tok))))), masks[len(ids) - 3])


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (JsonSchema({"type": "objekt"}), "json_schema", "objekt"),
        (JsonSchema("{not json"), "json_schema", "llguidance"),
        (Regex("a(b"), "regex", "unclosed group"),
        (Grammar("start: foo"), "grammar", "unknown name"),
    ],
)
def test_invalid_grammars_fail_at_compile_time_with_llguidance_s_message(spec, field, message):
    model = tiny_llama()
    decoder = decodekit.load(model, tokenizer())
    with pytest.raises(ConfigError, match=message) as error:
        decoder.generate("x", "greedy", constraint=spec, max_new_tokens=4)
    assert error.value.field == field


def test_cli_constraint_flags(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tokenizer().save_pretrained(model_dir)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}))
    catalog = tmp_path / "catalog.txt"
    catalog.write_text("alpha\nbeta\ngamma delta\n")
    base = ["generate", "q: ", "--model", str(model_dir), "--max-new-tokens", "12", "--output-format", "jsonl"]
    for flags, valid in [
        (["--regex", "[0-9]{2}"], lambda text: re.fullmatch("[0-9]{2}", text)),
        (["--json-schema", str(schema)], lambda text: json.loads(text) in ({"ok": True}, {"ok": False})),
        (["--catalog", str(catalog), "--strategy", "beam", "--num-beams", "3"], lambda text: text in ("alpha", "beta", "gamma delta")),
    ]:
        assert main(base + flags) == 0
        record = json.loads(capsys.readouterr().out)
        assert all(valid(s["text"]) and s["finish_reason"] == "eos" for s in record["sequences"]), record
    assert main(base + ["--regex", "x", "--catalog", str(catalog)]) == 2
    assert "at most one" in capsys.readouterr().err


def test_a_terminal_that_matches_nothing_is_refused_before_llguidance_and_any_model_call():
    """llguidance never finishes the first mask of such a grammar (its lexer keeps growing)."""
    import decodekit
    from decodekit.constraints import Grammar, Regex
    from decodekit.errors import ConfigError

    decoder = decodekit.load()
    before = decoder.model.forward_count
    with pytest.raises(ConfigError) as error:
        decoder.generate("x", constraint=Grammar("start: A B\nA: /a+/\nB: /[^\\s\\S]+/"), max_new_tokens=4)
    assert error.value.field == "grammar" and "/[^\\s\\S]+/" in str(error.value)
    with pytest.raises(ConfigError) as error:
        decoder.generate("x", constraint=Regex("a[^\\d\\D]"), max_new_tokens=4)
    assert error.value.field == "regex"
    assert decoder.model.forward_count == before
