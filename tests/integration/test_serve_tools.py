"""Function calling over real HTTP (127.0.0.1, a random free port) with the official ``openai``
client: a named or required call is constrained to its schema, so every call parses and
validates; the call's messages go back in later turns; what cannot be honoured is a 400."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import serving

import decodekit
from decodekit.constraints import JsonSchema
from decodekit.serve.format import default_chat_prompt

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
COUNT = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["n"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "count", "parameters": COUNT}},
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    yield from serving.embedded()


@pytest.fixture(scope="module")
def client(server):
    return serving.openai_client(server[1])


def test_a_named_call_is_the_library_constrained_to_its_parameters(server, client):
    decoder, _ = server
    got = client.chat.completions.create(
        model="stdlib-code", messages=MESSAGES, tools=TOOLS, max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # the same decoding in the library: the prompt shows the tools, the output is the arguments
    prompt = default_chat_prompt(MESSAGES, TOOLS)
    assert '"name": "get_weather"' in prompt and prompt.startswith("# tools\n")
    want = decoder.generate(prompt, constraint=JsonSchema(WEATHER), max_new_tokens=60)
    assert call.function.arguments == want.text


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_name_a_tool_and_validate_against_its_schema(client, parallel):
    got = client.chat.completions.create(
        model="stdlib-code", messages=MESSAGES, tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel,
        max_tokens=120, temperature=1.0, seed=3, n=3,
    )
    schemas = {"get_weather": WEATHER, "count": COUNT}
    for choice in got.choices:
        if choice.finish_reason == "length":  # cut short: no call is made up
            assert choice.message.tool_calls is None and choice.message.content
            continue
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        assert parallel or len(choice.message.tool_calls) == 1
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert any(c.finish_reason == "tool_calls" for c in got.choices)


def test_a_streamed_call_arrives_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model="stdlib-code", messages=MESSAGES, tools=TOOLS, max_tokens=60, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert [c.function.name for c in calls] == ["get_weather"] and calls[0].index == 0
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_call_and_its_result_go_back_in_the_next_turn(server, client):
    """The assistant's call and the tool's answer are part of the conversation the model reads."""
    decoder, _ = server
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    got = client.chat.completions.create(model="stdlib-code", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=12, temperature=0)
    assert got.choices[0].message.tool_calls is None
    prompt = default_chat_prompt(
        [MESSAGES[0], {"role": "assistant", "content": "", "tool_calls": messages[1]["tool_calls"]}, {"role": "tool", "content": "18 degrees, sunny"}], TOOLS
    )
    assert '{"name": "get_weather", "arguments": ' in prompt and "# tool\n18 degrees, sunny" in prompt
    want = decoder.generate(prompt, max_new_tokens=12)
    assert got.choices[0].message.content == want.text


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"tools": TOOLS}, "tool_choice"),  # "auto", the default with tools
        ({"tools": TOOLS, "tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}], "tool_choice": "required"}, "tools.0.function.name"),
        ({"tools": [TOOLS[0], TOOLS[0]], "tool_choice": "required"}, "tools.1.function.name"),
        ({"tools": [{"type": "retrieval"}], "tool_choice": "none"}, "tools.0"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}], "tool_choice": "required"}, "tools.0.function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}], "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tools.0.function.parameters.type"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}], "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tools.0.function.parameters"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": TOOLS, "tool_choice": "required", "stop": ["\n"]}, "stop"),
    ],
)
def test_tool_settings_that_cannot_be_honoured_are_400s_naming_the_field(client, settings, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="stdlib-code", messages=MESSAGES, max_tokens=8, **settings)
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param, raised.value.body


def test_a_chat_template_gets_the_tools_and_the_calls_with_their_arguments_parsed():
    """A tokenizer's own chat template is given ``tools=`` and each call's arguments as a
    mapping (what transformers' templates read), the tool's answer with its call id."""
    from decodekit.serve.format import chat_prompt
    from decodekit.serve.protocol import ChatCompletionRequest

    decoder = decodekit.load()
    decoder.tokenizer.chat_template = (
        "{% for t in tools or [] %}[tool {{ t.function.name }}: {{ t.function.parameters | tojson }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments.city }}]{% endfor %}"
        "{% if m.tool_call_id %}[for {{ m.tool_call_id }}]{% endif %}{% endfor %}<assistant>"
    )
    body = ChatCompletionRequest(
        messages=MESSAGES + [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=TOOLS, tool_choice="none",
    )
    prompt = chat_prompt(decoder, body)
    assert prompt == (
        f"[tool get_weather: {json.dumps(WEATHER)}][tool count: {json.dumps(COUNT)}]"
        "<user>What is the weather in Paris?<assistant>[call get_weather Paris]<tool>sunny[for c1]<assistant>"
    )


def test_messages_a_chat_template_refuses_are_a_400_naming_messages():
    """A template's own check (``raise_exception``: e.g. no system role) is the messages'
    fault, not the server's."""
    from decodekit.serve.format import chat_prompt
    from decodekit.serve.limits import APIError
    from decodekit.serve.protocol import ChatCompletionRequest

    decoder = decodekit.load()
    decoder.tokenizer.chat_template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}"
    with pytest.raises(APIError) as raised:
        chat_prompt(decoder, ChatCompletionRequest(messages=[{"role": "system", "content": "be brief"}]))
    assert raised.value.status == 400 and raised.value.body.param == "messages" and "System role not supported" in raised.value.body.message


def test_required_calls_resolve_each_tools_own_references(client):
    """``$defs``, ``definitions`` and a recursive ``#`` inside a tool's parameters resolve
    within that tool when the calls are one array (each tool a definition of the root)."""
    point = {"type": "object", "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}},
             "properties": {"p": {"$ref": "#/$defs/pt"}}, "required": ["p"], "additionalProperties": False}
    chain = {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["v", "next"], "additionalProperties": False}
    pick = {"type": "object", "definitions": {"a": {"enum": ["x", "y"]}}, "properties": {"a": {"$ref": "#/definitions/a"}}, "required": ["a"], "additionalProperties": False}
    schemas = {"point": point, "chain": chain, "pick": pick}
    tools = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in schemas.items()]
    got = client.chat.completions.create(model="stdlib-code", messages=MESSAGES, tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=48, temperature=1.0, seed=5, n=4)
    made = 0
    for choice in got.choices:
        for call in choice.message.tool_calls or ():
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
            made += 1
    assert made >= 1


def test_a_tool_whose_arguments_are_not_an_object_is_a_400(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "items": {"type": "integer"}}}}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="stdlib-code", messages=MESSAGES, tools=tools, tool_choice="required", max_tokens=8)
    assert raised.value.body["param"] == "tools.0.function.parameters.type"
