"""Prometheus metrics of a server (one registry per app): requests, tokens, queue depth,
running rows, prompts and prefixes taken from the prompt cache, time to first token and per-token latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, engine):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("decodekit_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry)
        self.prompt_tokens = Counter("decodekit_prompt_tokens", "Prompt tokens", registry=registry)
        self.generated_tokens = Counter("decodekit_generated_tokens", "Generated tokens", registry=registry)
        self.ttft = Histogram("decodekit_time_to_first_token_seconds", "Time from arrival to the first token", buckets=LATENCY_BUCKETS, registry=registry)
        self.token_latency = Histogram("decodekit_time_per_output_token_seconds", "Mean time per generated token of a request", buckets=LATENCY_BUCKETS, registry=registry)
        queue = Gauge("decodekit_queue_depth", "Groups of requests waiting for admission", registry=registry)
        running = Gauge("decodekit_running_rows", "Rows the engine is decoding", registry=registry)
        cached = Gauge("decodekit_prompt_cache_hits", "Prompts whose prefill the prompt cache saved since the start", registry=registry)
        prefixes = Gauge("decodekit_prompt_cache_prefix_tokens", "Prompt tokens taken from cached prefixes of other prompts since the start", registry=registry)
        prefixes.set_function(lambda: engine.prompt_cache_prefix_tokens)
        queue.set_function(lambda: engine.queued)
        cached.set_function(lambda: engine.prompt_cache_hits)
        running.set_function(lambda: engine.running_rows)

    def text(self) -> bytes:
        return generate_latest(self.registry)
