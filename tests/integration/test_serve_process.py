"""The server with its engine in a process of its own (what ``decodekit serve`` runs), over
real HTTP on 127.0.0.1 with the official ``openai`` client: the same answers as the library in
this process, errors that cross the process boundary intact, aborts that free rows there, and
a clean end when that process stops or dies."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import serving

import decodekit
from decodekit.model.prompt_cache import PREFIX_BLOCK
from decodekit.serve import create_app
from decodekit.serve.format import default_chat_prompt
from decodekit.serve.remote import EngineExited, EngineProcess


@pytest.fixture(scope="module")
def remote():
    engine = EngineProcess(threads=1, prompt_cache_mib=8)  # as ``decodekit serve`` runs it
    server, thread, url = serving.start(create_app(engine, "stdlib-code"))
    yield engine, url
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()
    assert engine._process.returncode == 0


@pytest.fixture(scope="module")
def local():
    return decodekit.load()


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_completions_equal_the_library_in_this_process(remote, local):
    client = _client(remote[1])
    prompt = "def parse(line):"
    greedy = client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=24, temperature=0)
    assert greedy.choices[0].text == local.generate(prompt, "greedy", max_new_tokens=24).text
    sampled = client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=24, temperature=0.8, top_p=0.9, seed=11, n=2)
    expected = local.generate(prompt, decodekit.Sampling(temperature=0.8, top_p=0.9, n=2, seed=11), max_new_tokens=24)
    assert [c.text for c in sampled.choices] == [s.text for s in expected.sequences]
    beams = client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=12, n=3, extra_body={"decodekit": {"strategy": "beam", "num_beams": 3}})
    expected = local.generate(prompt, decodekit.BeamSearch(num_beams=3, num_return_sequences=3), max_new_tokens=12)
    assert [c.text for c in beams.choices] == [s.text for s in expected.sequences]


def test_echoed_prompt_log_probs_come_from_the_engine_process(remote, local):
    client = _client(remote[1])
    prompt = "def parse(line):"
    got = client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=1).choices[0]
    ids = local.encode(prompt)
    assert got.logprobs.token_logprobs[0] is None
    assert got.logprobs.token_logprobs[1 : len(ids)] == pytest.approx([e[0] for e in local.prompt_logprobs(ids)[1:]], abs=1e-4)


def test_tool_calls_and_finish_reasons_cross_the_process(remote):
    client = _client(remote[1])
    params = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "count", "parameters": params}}]
    messages = [{"role": "user", "content": "count"}]
    got = client.chat.completions.create(model="stdlib-code", messages=messages, tools=tools, tool_choice="required", max_tokens=40, temperature=0)
    assert got.choices[0].finish_reason == "tool_calls"
    (call,) = got.choices[0].message.tool_calls
    assert call.function.name == "count" and 0 <= json.loads(call.function.arguments)["n"] <= 9
    cut = client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=2, temperature=0, response_format={"type": "json_object"})
    assert cut.choices[0].finish_reason == "length"


def test_streams_equal_the_whole_response(remote):
    client = _client(remote[1])
    kwargs = {"model": "stdlib-code", "prompt": "class Queue:", "max_tokens": 32, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 32


def test_config_errors_cross_the_process_as_400s_naming_the_field(remote):
    client = _client(remote[1])
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt="x", max_tokens=4, top_p=1.5)
    assert error.value.body["param"] == "top_p" and "top_p=1.5" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="stdlib-code", prompt=[10**9], max_tokens=4)
    assert error.value.body["param"] == "prompt"


def _metric(url, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def _rows(url) -> float:
    return _metric(url, "decodekit_running_rows")


def test_a_repeated_prompt_comes_from_the_prompt_cache_with_the_same_answer(remote, local):
    client, url = _client(remote[1]), remote[1]
    prompt = "def tokenize(text):\n    "
    before = _metric(url, "decodekit_prompt_cache_hits")
    answers = [client.completions.create(model="stdlib-code", prompt=prompt, max_tokens=16, temperature=0).choices[0].text for _ in range(3)]
    assert _metric(url, "decodekit_prompt_cache_hits") >= before + 2
    assert answers == [local.generate(prompt, "greedy", max_new_tokens=16).text] * 3


def test_chats_sharing_a_system_prompt_take_its_prefix_from_the_cache_with_the_same_answers(remote, local):
    client, url = _client(remote[1]), remote[1]
    system = {"role": "system", "content": "You write short, correct Python functions with docstrings and type hints. " * 3}
    before = _metric(url, "decodekit_prompt_cache_prefix_tokens")
    for question in ("a loop over a list", "read a file", "sort a dict by value"):
        messages = [system, {"role": "user", "content": question}]
        got = client.chat.completions.create(model="stdlib-code", messages=messages, max_tokens=12, temperature=0).choices[0].message.content
        want = local.generate(default_chat_prompt(messages), "greedy", max_new_tokens=12).text
        assert got == want
    assert _metric(url, "decodekit_prompt_cache_prefix_tokens") >= before + 2 * PREFIX_BLOCK


def test_a_disconnected_stream_frees_its_rows_in_the_engine_process(remote):
    url = remote[1]
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "def f(x):", "max_tokens": 2000, "temperature": 0, "stream": True, "extra_body": None}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    deadline = time.time() + 20
    while _rows(url) and time.time() < deadline:
        time.sleep(0.1)
    assert _rows(url) == 0


def test_a_dead_engine_process_fails_requests_cleanly_and_health_says_so():
    engine = EngineProcess(threads=1)
    server, thread, url = serving.start(create_app(engine, "stdlib-code"))
    try:
        client = _client(url)
        assert httpx.get(url + "/health").status_code == 200
        stream = client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=2000, temperature=0, stream=True)
        next(iter(stream))
        engine._process.kill()
        with pytest.raises(openai.APIError, match="engine's process exited"):
            list(stream)  # the stream ends with an error chunk, never a hang
        deadline = time.time() + 10
        while engine.exited is None and time.time() < deadline:
            time.sleep(0.05)
        assert isinstance(engine.exited, EngineExited)
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        with pytest.raises(openai.APIStatusError) as error:
            client.completions.create(model="stdlib-code", prompt="x", max_tokens=4)
        assert error.value.status_code == 503 and error.value.body["type"] == "server_error"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def test_the_serve_command_runs_the_engine_in_a_child_and_stops_it_on_sigterm():
    import os
    import signal
    import subprocess
    import sys

    port = serving.free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "decodekit", "serve", "--port", str(port), "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        children = [int(c) for c in open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()]
        assert len(children) == 1, "one engine process"
        answer = _client(url).completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=8, temperature=0)
        assert answer.choices[0].text == decodekit.load().generate("def f(x):", max_new_tokens=8).text
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
        # uvicorn re-raises the signal once it has shut down (the app has closed the engine)
        assert process.returncode in (0, -signal.SIGTERM) and "Traceback" not in output, output
        assert not os.path.exists(f"/proc/{children[0]}"), "the engine process is gone"
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("flags, named", [(["--threads", "0"], "--threads"), (["--port", "70000"], "--port"), (["--max-body-bytes", "10"], "--max-body-bytes")])
def test_bad_serve_flags_are_one_line_errors_before_any_model_load(flags, named, capsys):
    from decodekit.cli import main

    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err


def test_submits_from_many_threads_at_once_equal_the_library(remote, local):
    import threading

    engine = remote[0]
    prompts = [f"def f{i}(x):" for i in range(8)]
    got = {}

    def worker(i):
        got[i] = engine.submit([prompts[i]], decodekit.Sampling(temperature=0.9, seed=i), max_new_tokens=12)[0].result(timeout=120)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    for i, prompt in enumerate(prompts):
        assert got[i].text == local.generate(prompt, decodekit.Sampling(temperature=0.9, seed=i), max_new_tokens=12).text


def test_a_setting_that_cannot_cross_to_the_engine_process_is_a_config_error_naming_it(remote):
    from decodekit.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        remote[0].submit(["def f(x):"], "greedy", max_new_tokens=4, processors=[lambda ids, scores: scores])
    assert error.value.field == "processors"
