"""What other clients send: vLLM's top-level sampling fields, OpenAI fields that ask for nothing
different here, model retrieval, and errors in OpenAI's shape for every path. Real HTTP on
127.0.0.1 (a random free port), the official ``openai`` client and raw ``httpx``."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import serving

import decodekit

PROMPT = "def read(path):"


@pytest.fixture(scope="module")
def server():
    yield from serving.embedded()


@pytest.fixture(scope="module")
def client(server):
    return serving.openai_client(server[1])


def test_vllm_sampling_fields_equal_the_library(server, client):
    decoder, _ = server
    extra = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "min_tokens": 10}
    got = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=12, temperature=0.9, seed=11, extra_body=extra)
    want = decoder.generate(PROMPT, decodekit.Sampling(temperature=0.9, top_k=5, min_p=0.05, seed=11), max_new_tokens=12, repetition_penalty=1.3, min_new_tokens=10)
    assert got.choices[0].decodekit["token_ids"] == list(want.best.token_ids)
    # the same fields in the decodekit object give the same output
    same = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=12, temperature=0.9, seed=11, extra_body={"decodekit": extra})
    assert same.choices[0].decodekit["token_ids"] == list(want.best.token_ids)
    # and without them the output differs (they took effect)
    plain = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=12, temperature=0.9, seed=11)
    assert plain.choices[0].decodekit["token_ids"] != list(want.best.token_ids)


def test_top_k_and_min_p_leave_greedy_unchanged_and_top_k_minus_one_is_off(server, client):
    decoder, _ = server
    want = decoder.generate(PROMPT, max_new_tokens=10).best.token_ids
    for extra in ({"top_k": 3, "min_p": 0.2}, {"top_k": -1}):
        got = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=10, temperature=0, extra_body=extra)
        assert got.choices[0].decodekit["token_ids"] == list(want)
    sampled = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=10, temperature=1.0, seed=3, extra_body={"top_k": -1})
    library = decoder.generate(PROMPT, decodekit.Sampling(seed=3), max_new_tokens=10).best.token_ids
    assert sampled.choices[0].decodekit["token_ids"] == list(library)


def test_stop_token_ids_end_the_output_and_ignore_eos_decodes_past_eos(server, client):
    decoder, _ = server
    first = decoder.generate(PROMPT, max_new_tokens=6).best.token_ids
    got = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"stop_token_ids": [first[2]]})
    assert got.choices[0].decodekit["token_ids"] == list(first[:3]) and got.choices[0].finish_reason == "stop"
    # EOS made the most likely token: it ends the output, unless ignore_eos
    eos = decoder.model.eos_token_ids[0]
    bias = {"logit_bias": {str(eos): 100}}
    ended = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=5, temperature=0, extra_body=bias)
    assert ended.choices[0].decodekit["token_ids"] == [eos] and ended.choices[0].finish_reason == "stop"
    past = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=5, temperature=0, extra_body={**bias, "ignore_eos": True})
    want = decoder.generate(PROMPT, max_new_tokens=5, logit_bias={eos: 100}, eos_token_ids=()).best.token_ids
    assert past.choices[0].decodekit["token_ids"] == list(want) == [eos] * 5 and past.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 4, "decodekit": {"top_k": 4}}, "decodekit.top_k"),
        ({"min_tokens": 2, "decodekit": {"min_tokens": 2}}, "decodekit.min_tokens"),
        ({"top_k": 4, "decodekit": {"strategy": "beam"}}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"min_tokens": -3}, "min_tokens"),
        ({"decodekit": {"typical_p": 0.5}}, "decodekit.typical_p"),
    ],
)
def test_bad_vllm_fields_are_400s_naming_the_field_given(client, extra, param):
    temperature = None if "decodekit" in extra and extra["decodekit"].get("strategy") == "beam" else 0
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=4, temperature=temperature, extra_body=extra)
    assert error.value.body["param"] == param


def test_openai_fields_that_ask_for_nothing_different_are_accepted(server, client):
    decoder, _ = server
    messages = [{"role": "user", "content": "hi"}]
    want = client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=6, temperature=0).choices[0].message.content
    got = client.chat.completions.create(
        model="stdlib-code", messages=messages, max_tokens=6, temperature=0, store=False, metadata={"team": "a"},
        service_tier="auto", modalities=["text"], tools=[], tool_choice="none", parallel_tool_calls=False,
    )
    assert got.choices[0].message.content == want


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"tool_choice": "auto"}, "tool_choice"),  # with no tools (function calling: test_serve_tools.py)
        ({"reasoning_effort": "low"}, "reasoning_effort"),
    ],
)
def test_openai_fields_asking_for_what_is_not_here_are_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="stdlib-code", messages=[{"role": "user", "content": "hi"}], max_tokens=4, **kwargs)
    assert error.value.body["param"] == param


def test_models_retrieve_and_errors_in_openai_shape_on_every_path(server, client):
    _, base = server
    assert client.models.retrieve("stdlib-code").id == "stdlib-code"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("gpt-4")
    assert error.value.body["param"] == "model"
    for response, status in (
        (httpx.post(base + "/v1/embeddings", json={"input": "x"}), 404),
        (httpx.get(base + "/v1/completions"), 405),
        (httpx.post(base + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400),
    ):
        assert response.status_code == status
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"} and body["message"]
    bad_json = httpx.post(base + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}).json()["error"]
    assert bad_json["param"] is None and "not valid JSON" in bad_json["message"]
    # unknown paths do not grow the metrics' label set
    text = httpx.get(base + "/metrics").text
    assert "/v1/embeddings" not in text and 'endpoint="other"' in text


def test_a_prompt_longer_than_the_context_is_a_400_naming_the_prompt(server, client):
    decoder, _ = server
    prompt = "x = 1\n" * 1500  # 6,001 tokens against the embedded model's 4,096
    with pytest.raises(decodekit.errors.InputError, match="prompt 0 has 6001 tokens"):
        decoder.generate(prompt, max_new_tokens=4)
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=4)
    assert error.value.body["param"] == "prompt" and "at most 4095" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="stdlib-code", messages=[{"role": "user", "content": prompt}], max_tokens=4)
    assert error.value.body["param"] == "messages"


def test_vllm_guided_fields_constrain_as_the_library_does(server, client):
    decoder, _ = server
    from decodekit.constraints import Catalog, Grammar, JsonSchema, Regex

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}}, "required": ["name", "ok"], "additionalProperties": False}
    cases = [
        ({"guided_json": schema}, JsonSchema(schema)),
        ({"guided_json": json.dumps(schema)}, JsonSchema(schema)),
        ({"guided_regex": "[0-9]{2,4}-[a-z]+"}, Regex("[0-9]{2,4}-[a-z]+")),
        ({"guided_choice": ["yes", "no", "maybe"]}, Catalog(["yes", "no", "maybe"])),
        ({"guided_grammar": 'start: "x = " NUMBER\nNUMBER: /[0-9]+/'}, Grammar('start: "x = " NUMBER\nNUMBER: /[0-9]+/')),
    ]
    for extra, constraint in cases:
        got = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=40, temperature=0, extra_body=extra)
        want = decoder.generate(PROMPT, max_new_tokens=40, constraint=constraint).best
        assert got.choices[0].text == want.text and got.choices[0].finish_reason == "stop", extra
    parsed = json.loads(client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=40, temperature=0, extra_body=cases[0][0]).choices[0].text)
    assert set(parsed) == {"name", "ok"} and isinstance(parsed["ok"], bool)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_regex": "[0-9]+", "guided_choice": ["a"]}, "guided_choice"),
        ({"guided_choice": ["a"], "decodekit": {"regex": "[a-z]"}}, "guided_choice"),
        ({"guided_regex": "([0-9]"}, "guided_regex"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
        ({"decodekit": {"regex": "([0-9]"}}, "decodekit.regex"),
    ],
)
def test_bad_or_several_guided_fields_are_400s_naming_them(client, extra, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=4, temperature=0, extra_body=extra)
    assert error.value.body["param"] == param


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", "2"), ("stream", "true"), ("echo", 1), ("max_tokens", True), ("seed", 5.0), ("temperature", "0.5"), ("logprobs", False)],
)
def test_a_value_of_the_wrong_type_is_a_400_not_coerced(server, field, value):
    """JSON's types are kept: "2" is not 2, 1 is not true, true is not 1 token."""
    response = httpx.post(server[1] + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, field: value}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("chat", [False, True])
def test_top_logprobs_under_a_constraint_leave_out_what_it_rules_out(server, chat):
    """A constraint that allows fewer tokens than the alternatives asked for: the ruled-out
    ones (log-prob -inf) are left out, and every body and chunk is JSON (no -Infinity)."""
    _, base = server
    if chat:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "yes?"}], "logprobs": True, "top_logprobs": 3}
    else:
        path, body = "/v1/completions", {"prompt": "x", "logprobs": 3}
    body.update(max_tokens=4, temperature=0, guided_choice=["yes", "no"])
    plain = httpx.post(base + path, json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    choice = _strict_json(plain.text)["choices"][0]
    if chat:
        tops = [t["top_logprobs"] for t in choice["logprobs"]["content"]]
        assert all(len(top) >= 1 and all(e["logprob"] > -1e30 for e in top) for top in tops)
    else:
        assert all(len(top) >= 1 for top in choice["logprobs"]["top_logprobs"])
    assert any(len(top) < 3 for top in (tops if chat else choice["logprobs"]["top_logprobs"]))  # some were ruled out
    with httpx.stream("POST", base + path, json={**body, "stream": True}, timeout=60) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert lines and all(_strict_json(line) for line in lines)


def test_a_constrained_output_cut_short_by_max_tokens_finishes_with_length(client):
    """Not ``constraint``: OpenAI clients read ``length`` (``parse()`` raises its
    LengthFinishReasonError instead of failing to parse half a JSON document)."""
    import pydantic

    class Answer(pydantic.BaseModel):
        flag: bool
        name: str = pydantic.Field(max_length=6)

    messages = [{"role": "user", "content": "json"}]
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": Answer.model_json_schema()}}
    got = client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=3, temperature=0, response_format=schema)
    assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=3, temperature=0, response_format=schema, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="stdlib-code", messages=messages, max_tokens=3, temperature=0, response_format=Answer)
    done = client.chat.completions.parse(model="stdlib-code", messages=messages, max_tokens=64, temperature=0, response_format=Answer)
    assert done.choices[0].finish_reason == "stop" and isinstance(done.choices[0].message.parsed, Answer)


@pytest.mark.parametrize("beam", [False, True])
def test_echo_puts_the_prompt_first_streamed_or_not(server, client, beam):
    decoder, _ = server
    extra = {"extra_body": {"decodekit": {"strategy": "beam", "num_beams": 2}}} if beam else {"temperature": 0}
    for prompt, text in ((PROMPT, PROMPT), (decoder.encode("x = 1"), decoder.decode_text(decoder.encode("x = 1")))):
        want = decoder.generate(prompt, decodekit.BeamSearch(num_beams=2) if beam else decodekit.Greedy(), max_new_tokens=5).best.text
        got = client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=5, echo=True, **extra)
        assert got.choices[0].text == text + want
        streamed = "".join(c.choices[0].text for c in client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=5, echo=True, stream=True, **extra) if c.choices)
        assert streamed == text + want


def test_echo_with_logprobs_scores_the_prompt_too(server, client):
    """What evaluation harnesses read: the prompt's tokens with their log-probs (the first
    null) and alternatives, then the generated ones', offsets into the echoed text; equal to
    the library's teacher-forced scores, streamed or not."""
    decoder, _ = server
    ids = decoder.encode(PROMPT)
    got = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2).choices[0]
    plain = client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2).choices[0]
    lp = got.logprobs
    n = len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    scored = decoder.score([ids[:1]], [ids[1:]])[0].token_logprobs
    assert lp.token_logprobs[1:n] == pytest.approx(scored, abs=1e-4)
    assert all(len(top) == 2 and max(top.values()) >= value - 1e-5 for top, value in zip(lp.top_logprobs[1:n], lp.token_logprobs[1:n]))
    assert lp.tokens[n:] == plain.logprobs.tokens and lp.token_logprobs[n:] == pytest.approx(plain.logprobs.token_logprobs, abs=1e-5)
    assert got.text == PROMPT + plain.text and lp.text_offset[n] == len(PROMPT)
    assert lp.text_offset == sorted(lp.text_offset)
    chunks = [c.choices[0] for c in client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2, stream=True) if c.choices]
    streamed = [x for c in chunks if c.logprobs is not None for x in c.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)
    assert [o for c in chunks if c.logprobs is not None for o in c.logprobs.text_offset] == lp.text_offset


def test_a_reply_message_given_back_as_it_came_is_accepted(client):
    """``message.model_dump()`` of a reply carries ``refusal``, ``annotations``, ``audio``,
    ``function_call`` and ``tool_calls`` as nulls; null fields with defaults are the defaults."""
    messages = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=4, temperature=0).choices[0].message
    later = messages + [reply.model_dump(), {"role": "user", "content": "more"}]
    got = client.chat.completions.create(model="stdlib-code", messages=later, max_tokens=4, temperature=0, extra_body={"n": None, "stream": None, "logprobs": None, "presence_penalty": None, "functions": None})
    assert got.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": 5}, "prompt"),  # not "prompt.str"
        ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ("/v1/completions", {"prompt": "x", "logprobs": 2, "temperature": 0, "decodekit": {"speculative": "ngram"}}, "logprobs"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object", "json_schema": {"name": "a", "schema": {}}}}, "response_format.json_schema"),
        ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x", "refusal": "no"}]}, "messages.0.refusal"),
    ],
)
def test_errors_name_the_field_the_request_gave(server, path, body, param):
    response = httpx.post(server[1] + path, json={"max_tokens": 2, **body} if "max_completion_tokens" not in body else body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_chat_logprob_bytes_are_each_tokens_own_bytes(server, client):
    """Byte-level tokens report their one byte each (not U+FFFD's), so the bytes of the
    chosen tokens rebuild the text."""
    got = client.chat.completions.create(
        model="stdlib-code", messages=[{"role": "user", "content": "party"}], max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"guided_regex": "🎉ü"},
    )
    content = got.choices[0].logprobs.content
    assert len(content) > 2  # several byte-level tokens
    assert bytes(b for entry in content for b in entry.bytes).decode("utf-8") == got.choices[0].message.content == "🎉ü"


def test_echo_with_max_tokens_0_scores_the_prompts_without_decoding(server, client):
    """The scoring request of evaluation harnesses: the prompts back with their log-probs,
    nothing generated, streamed or not; without echo, max_tokens 0 stays a 400."""
    decoder, _ = server
    prompts = [PROMPT, "import os"]
    got = client.completions.create(model="stdlib-code", prompt=prompts, max_tokens=0, echo=True, logprobs=1, temperature=0)
    assert [c.text for c in got.choices] == prompts and {c.finish_reason for c in got.choices} == {"length"}
    assert got.usage.completion_tokens == 0 and got.usage.prompt_tokens == sum(len(decoder.encode(p)) for p in prompts)
    for text, c in zip(prompts, got.choices):
        ids = decoder.encode(text)
        assert c.logprobs.token_logprobs[0] is None
        assert c.logprobs.token_logprobs[1:] == pytest.approx([e[0] for e in decoder.prompt_logprobs(ids)[1:]], abs=1e-4)
    streamed = [c for c in client.completions.create(model="stdlib-code", prompt=prompts, max_tokens=0, echo=True, logprobs=1, stream=True, temperature=0)]
    assert sorted((c.choices[0].index, c.choices[0].text) for c in streamed) == [(0, prompts[0]), (1, prompts[1])]
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt=PROMPT, max_tokens=0)
    assert error.value.body["param"] == "max_tokens"


@pytest.mark.parametrize("echo", [False, True])
def test_text_offsets_follow_characters_split_across_tokens(server, echo):
    """Byte-level tokens of one character begin where it does: offsets never decrease, stay
    within the text, and are the same streamed or not; ``logprobs`` 0 gives one empty map per
    token."""
    _, base = server
    body = {"prompt": "s = 'héllo 中文 😀'", "max_tokens": 6, "temperature": 0, "logprobs": 0, "echo": echo, "guided_regex": "(中文|é|😀)+"}
    whole = httpx.post(base + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    lp = whole["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == len(lp["top_logprobs"])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and max(lp["text_offset"]) < len(whole["text"])
    assert all(top == {} for top in lp["top_logprobs"][1 if echo else 0 :])
    with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    streamed = [o for c in chunks for ch in c["choices"] if ch["logprobs"] for o in ch["logprobs"]["text_offset"]]
    assert streamed == lp["text_offset"]
