"""The OpenAI-compatible server over real HTTP on 127.0.0.1 (a random free port), driven by
the official ``openai`` client; the test starts the server and stops it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import serving

import decodekit
from decodekit.serve import ServerLimits, create_app


def _start(decoder, limits=None):
    return serving.start(create_app(decoder, "stdlib-code", limits))


@pytest.fixture(scope="module")
def server():
    decoder = decodekit.load()
    instance, thread, url = _start(decoder)
    yield decoder, url
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def tight(server):
    """A second server on the same decoder with small limits."""
    limits = ServerLimits(max_concurrent_requests=1, max_queued_requests=0, max_prompt_tokens=8, max_tokens=32, max_body_bytes=4096, max_request_rows=6)
    instance, thread, url = _start(server[0], limits)
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


def test_limits_give_openai_errors(tight):
    client = openai.OpenAI(base_url=tight + "/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=33)
    assert error.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x = 1\n" * 20, max_tokens=4)
    assert error.value.body["param"] == "prompt"
    # rows per request: prompts times n (or beams)
    for settings, param in (({"prompt": ["x"] * 7}, "prompt"), ({"prompt": ["x"] * 2, "n": 4, "temperature": 1.0}, "prompt"), ({"prompt": "x", "n": 7, "temperature": 1.0}, "n"),
                            ({"prompt": "x", "extra_body": {"decodekit": {"strategy": "beam", "num_beams": 8}}}, "n")):
        with pytest.raises(openai.BadRequestError) as error:
            client.completions.create(model="stdlib-code", max_tokens=2, **settings)
        assert error.value.body["param"] == param and "limit of 6 rows" in error.value.body["message"]
    assert len(client.completions.create(model="stdlib-code", prompt=["x"] * 3, n=2, temperature=1.0, max_tokens=2).choices) == 6
    response = httpx.post(tight + "/v1/completions", content=json.dumps({"prompt": "x" * 5000}), headers={"content-type": "application/json"})
    assert response.status_code == 413 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    # one slot, no queue: a second request while one streams is a 429; the slot comes back after
    stream = client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=32, temperature=0, stream=True)
    first = next(iter(stream))
    with pytest.raises(openai.RateLimitError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=2)
    assert error.value.status_code == 429 and error.value.body["type"] == "rate_limit_error"
    rest = list(stream)  # drain the stream: its slot is released when it ends
    assert first.choices and rest[-1].choices[0].finish_reason is not None
    assert client.completions.create(model="stdlib-code", prompt="x", max_tokens=2).choices


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_completion_equals_generate(server, client):
    decoder, _ = server
    response = client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=12, temperature=0)
    want = decoder.generate("def f(x):", max_new_tokens=12)
    assert response.choices[0].text == want.text
    assert response.usage.completion_tokens == len(want.best.token_ids)
    assert response.usage.prompt_tokens == len(want.prompt_token_ids)


def test_chat_completion_uses_the_chat_template(server, client):
    decoder, _ = server
    response = client.chat.completions.create(model="stdlib-code", messages=[{"role": "user", "content": "write a loop"}], max_tokens=10, temperature=0)
    prompt = "# user\nwrite a loop\n\n# assistant\n"
    assert response.choices[0].message.content == decoder.generate(prompt, max_new_tokens=10).text
    assert response.choices[0].message.role == "assistant"


def test_seeded_requests_are_identical_whatever_is_in_flight(client):
    def ask(seed):
        return client.completions.create(model="stdlib-code", prompt="import ", max_tokens=16, temperature=0.9, seed=seed, n=2)

    alone = ask(7)
    results = {}

    def worker(i):
        results[i] = ask(7 if i % 2 == 0 else i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in (0, 2, 4):
        assert [c.text for c in results[i].choices] == [c.text for c in alone.choices]
    assert len(alone.choices) == 2


def test_streaming_equals_the_whole_response_and_reports_usage(client):
    whole = client.completions.create(model="stdlib-code", prompt="class A:", max_tokens=14, temperature=0)
    chunks = list(client.completions.create(model="stdlib-code", prompt="class A:", max_tokens=14, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    chat = list(client.chat.completions.create(model="stdlib-code", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    assert any(c.choices[0].finish_reason for c in chat)


def test_beam_search_returns_its_n_best_as_choices(server, client):
    decoder, _ = server
    response = client.completions.create(model="stdlib-code", prompt="def read(path):", max_tokens=8, n=3, extra_body={"decodekit": {"strategy": "beam", "num_beams": 4}})
    want = decoder.generate("def read(path):", decodekit.BeamSearch(num_beams=4, num_return_sequences=3), max_new_tokens=8)
    assert [c.text for c in response.choices] == [s.text for s in want.sequences]
    scores = [c.model_extra["decodekit"]["score"] for c in response.choices]
    assert scores == pytest.approx([s.score for s in want.sequences], abs=1e-4)


def test_json_schema_response_format_constrains_the_output(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    response = client.chat.completions.create(
        model="stdlib-code", messages=[{"role": "user", "content": "config"}], max_tokens=24, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}},
    )
    choice = response.choices[0]
    if choice.finish_reason == "stop":
        import json

        assert isinstance(json.loads(choice.message.content)["ok"], bool)
    else:
        assert choice.finish_reason in ("constraint", "length")


def test_logprobs_are_the_chosen_tokens(server, client):
    decoder, _ = server
    response = client.completions.create(model="stdlib-code", prompt="x = ", max_tokens=6, temperature=0, logprobs=0)
    want = decoder.generate("x = ", max_new_tokens=6).best
    assert response.choices[0].logprobs.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)


def test_top_logprobs_penalties_and_logit_bias_equal_the_library(server, client):
    decoder, _ = server
    response = client.completions.create(
        model="stdlib-code", prompt="x = ", max_tokens=6, temperature=0, logprobs=3, presence_penalty=0.8, frequency_penalty=0.4, logit_bias={"7": 2.0}
    )
    want = decoder.generate("x = ", max_new_tokens=6, top_logprobs=3, presence_penalty=0.8, frequency_penalty=0.4, logit_bias={7: 2.0}).best
    got = response.choices[0].logprobs
    assert response.choices[0].text == want.text
    assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)
    assert [list(top.values()) for top in got.top_logprobs] == [pytest.approx([t.logprob for t in top], abs=1e-5) for top in want.top_logprobs]
    chat = client.chat.completions.create(
        model="stdlib-code", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
    # streamed: the same log-probs, chunk by chunk
    stream = client.completions.create(model="stdlib-code", prompt="x = ", max_tokens=6, temperature=0, logprobs=3, stream=True,
                                       presence_penalty=0.8, frequency_penalty=0.4, logit_bias={"7": 2.0})
    streamed = [lp for chunk in stream for c in chunk.choices if c.logprobs for lp in c.logprobs.token_logprobs]
    assert streamed == pytest.approx(want.token_logprobs, abs=1e-5)


def test_logit_bias_can_ban_a_token(client):
    first = client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=1, temperature=0, logprobs=1)
    token = first.choices[0].logprobs.tokens[0]
    banned = client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=1, temperature=0, logprobs=1,
                                       logit_bias={str(first.choices[0].decodekit["token_ids"][0]): -100})
    assert banned.choices[0].logprobs.tokens[0] != token


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"presence_penalty": 500.0}, "presence_penalty"),
        ({"logit_bias": {"five": 1.0}}, "logit_bias"),
        ({"logit_bias": {"5": 1000.0}}, "logit_bias"),
        ({"logprobs": 50}, "logprobs"),
        ({"temperature": 0, "n": 2}, "n"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"extra_body": {"unknown_field": 1}}, "unknown_field"),
        ({"extra_body": {"decodekit": {"strategy": "diverse_beam"}}, "stop": ["\n"]}, "stop"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_parameters_decodekit_cannot_honour_are_400s_naming_them(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=kwargs.pop("max_tokens", 4), **kwargs)
    assert error.value.status_code == 400
    assert param in (error.value.body or {}).get("param", "") or param in str(error.value)


def test_models_health_and_metrics(server, client):
    _, base = server
    assert [m.id for m in client.models.list().data] == ["stdlib-code"]
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    client.completions.create(model="stdlib-code", prompt="y", max_tokens=3, temperature=0)
    text = httpx.get(base + "/metrics").text
    for name in ("decodekit_requests_total", "decodekit_generated_tokens_total", "decodekit_queue_depth", "decodekit_running_rows", "decodekit_time_to_first_token_seconds_bucket"):
        assert name in text


def test_a_disconnected_stream_aborts_its_request(server):
    decoder, base = server
    with httpx.stream("POST", base + "/v1/completions", json={"prompt": "def f():", "max_tokens": 200, "temperature": 0, "stream": True, "decodekit": {"min_tokens": 200}}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    deadline = time.time() + 20
    while decoder.engine.running_rows and time.time() < deadline:
        time.sleep(0.1)
    assert decoder.engine.running_rows == 0


def test_a_chat_without_messages_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="stdlib-code", messages=[], max_tokens=2)
    assert "messages" in str(error.value)


def test_concurrent_speculative_streams_equal_the_library(server, client):
    """Speculative requests in flight together join one speculative run; each stream is still
    what the library returns for that request alone."""
    decoder, _ = server
    prompts = ["x = 1\nx = 1\n", "def f(a):\n    return a", "import os\nimport sys\n", "class A:\n    pass\n"]

    def settings(i):
        return {"max_tokens": 10 + 4 * i, "temperature": 0 if i % 2 == 0 else 0.8, "seed": i}

    texts, errors = {}, []

    def worker(i):
        try:
            chunks = client.completions.create(model="stdlib-code", prompt=prompts[i], stream=True, extra_body={"decodekit": {"speculative": "suffix"}}, **settings(i))
            texts[i] = "".join(c.choices[0].text for c in chunks if c.choices)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(texts) == len(prompts)
    speculative = decodekit.Speculative("suffix")
    for i, prompt in enumerate(prompts):
        s = settings(i)
        strategy = decodekit.Greedy(speculative=speculative) if s["temperature"] == 0 else decodekit.Sampling(temperature=s["temperature"], seed=s["seed"], speculative=speculative)
        assert texts[i] == decoder.generate(prompt, strategy, max_new_tokens=s["max_tokens"]).best.text
