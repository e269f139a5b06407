"""Property-based requests generated from the server's own OpenAPI schema (schemathesis), sent
over real HTTP to a server on 127.0.0.1: whatever the input, no response is a 5xx. Bounded:
a fixed number of derandomised examples per operation, small ``max_tokens`` limits."""

from __future__ import annotations

import pytest
import schemathesis
import serving
from hypothesis import HealthCheck, given, settings

import decodekit
from decodekit.serve import ServerLimits, create_app

EXAMPLES = 40


@pytest.fixture(scope="module")
def url():
    app = create_app(decodekit.load(), "stdlib-code", ServerLimits(max_tokens=8, max_prompt_tokens=256, max_body_bytes=64 * 1024))
    server, thread, base = serving.start(app, log_level="critical")
    yield base
    server.should_exit = True
    thread.join(timeout=10)


def test_no_input_gives_a_server_error(url):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}
    failures, answered = [], {}

    def checker(operation):
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=url, timeout=60)
            answered.setdefault(operation.path, set()).add(response.status_code)
            if response.status_code >= 500:
                failures.append((operation.label, case.body, response.status_code, response.text[:300]))

        return check

    for operation in operations:
        checker(operation)()
    assert not failures, failures[:3]
    # the generated requests reached decoding too, not only validation
    assert 200 in answered["/v1/completions"] and 200 in answered["/v1/chat/completions"], answered
