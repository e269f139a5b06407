"""OpenAI request fields -> decodekit config objects, one field to one setting. A field decodekit
cannot honour is a :class:`~decodekit.errors.ConfigError` naming it (a 400), never ignored."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import decodekit
from decodekit.errors import ConfigError
from decodekit.serve.protocol import ChatCompletionRequest, CompletionRequest, DecodekitOptions
from decodekit.serve.tools import ToolPlan, request_tools, tool_plan

PARAMS = {
    "max_new_tokens": "max_tokens",
    "num_return_sequences": "n",
    "min_new_tokens": "decodekit.min_tokens",
    "repetition_penalty": "decodekit.repetition_penalty",
    "no_repeat_ngram_size": "decodekit.no_repeat_ngram_size",
    "num_beams": "decodekit.num_beams",
    "num_groups": "decodekit.num_groups",
    "length_penalty": "decodekit.length_penalty",
    "diversity_strength": "decodekit.diversity_strength",
    "diversity": "decodekit.diversity",
    "json_schema": "response_format.json_schema",
    "top_k": "decodekit.top_k",
    "min_p": "decodekit.min_p",
    "typical_p": "decodekit.typical_p",
}
"""decodekit field names -> the request's own names, for error messages."""

TOP_LEVEL = {"min_new_tokens": "min_tokens", "repetition_penalty": "repetition_penalty", "top_k": "top_k", "min_p": "min_p"}
"""decodekit field names -> the vLLM names a request may give them by at its top level (or in
its ``decodekit`` object; not both)."""


MAX_TOP_LOGPROBS = 20
"""Alternatives per token a request may ask for (OpenAI's chat limit)."""


def api_param(field: str, req=None) -> str:
    """The request field a decodekit field came from (``req``: the request, for the fields it
    may give at its top level)."""
    if req is not None and field in TOP_LEVEL and getattr(req, TOP_LEVEL[field], None) is not None:
        return TOP_LEVEL[field]
    if req is not None and field in ("constraint", "regex", "grammar", "catalog", "json_schema", "schema"):  # its one constraint field
        calls = request_tools(req)
        if calls is not None and calls.calls:  # the constraint is the call's schema
            return "tools" if calls.choice == "required" else f"tools.{[t.name for t in calls.tools].index(calls.choice)}.function.parameters"
        ext = req.decodekit or DecodekitOptions()
        given = [f"decodekit.{n}" for n in ("regex", "grammar", "catalog") if getattr(ext, n) is not None]
        given += [n for n in ("guided_json", "guided_regex", "guided_choice", "guided_grammar") if getattr(req, n) is not None]
        fmt = req.response_format
        if fmt is not None and fmt.type != "text":
            return "response_format.json_schema" if fmt.type == "json_schema" else "response_format"
        return given[0] if given else field
    if req is not None and field == "top_logprobs" and isinstance(req, CompletionRequest):
        return "logprobs"
    if req is not None and field == "eos_token_ids" and getattr(req, "ignore_eos", None):
        return "ignore_eos"
    if req is not None and field == "max_new_tokens" and getattr(req, "max_completion_tokens", None) is not None:
        return "max_completion_tokens"
    return PARAMS.get(field, field)


def _check_no_ops(req: ChatCompletionRequest) -> None:
    """OpenAI chat fields accepted only at values that ask for nothing different here."""
    if req.store:
        raise ConfigError("store", req.store, "false or null: this server does not store completions")
    if req.service_tier not in (None, "auto", "default"):
        raise ConfigError("service_tier", req.service_tier, "'auto', 'default' or null (this server has one tier)")
    if req.modalities not in (None, ["text"]):
        raise ConfigError("modalities", req.modalities, '["text"] or null')


def _top_level(req, ext: DecodekitOptions) -> dict:
    """The settings a request may give by vLLM's top-level names or in ``decodekit``: name ->
    value (None: not given)."""
    values = {}
    for name in TOP_LEVEL.values():
        top, own = getattr(req, name), getattr(ext, name)
        if top is not None and own is not None:
            raise ConfigError(f"decodekit.{name}", own, f"null when the request gives {name} at its top level (once)")
        values[name] = top if top is not None else own
    return values


@dataclass
class Decoding:
    strategy: Any
    settings: dict
    constraint: Any
    choices_per_prompt: int
    beam: bool
    tools: ToolPlan | None = None

    @property
    def whole(self) -> bool:
        """Whether outputs are sent whole, not token by token: beam searches' n-best, and
        tool calls (a call's message is complete or not at all)."""
        return self.beam or (self.tools is not None and self.tools.calls)


def decoding(req: CompletionRequest | ChatCompletionRequest, default_max_tokens: int) -> Decoding:
    """The strategy, options and constraint a request asks for."""
    if req.stream_options is not None and not req.stream:
        raise ConfigError("stream_options", req.stream_options.model_dump(), "null unless stream is true")
    if req.response_format is not None and req.response_format.type != "json_schema" and req.response_format.json_schema is not None:
        raise ConfigError("response_format.json_schema", "{...}", f"absent with type {req.response_format.type!r} (a schema is type 'json_schema')")
    if isinstance(req, CompletionRequest):
        if req.suffix:
            raise ConfigError("suffix", req.suffix, "null or empty: insertion (suffix) is not supported")
        if req.best_of is not None and req.best_of != req.n:
            raise ConfigError("best_of", req.best_of, "equal to n (or absent): best_of is not supported")
        top = req.logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ConfigError("logprobs", req.logprobs, f"an integer in [0, {MAX_TOP_LOGPROBS}] (alternatives per token), or null")
        max_tokens = req.max_tokens
    else:
        top = req.top_logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ConfigError("top_logprobs", req.top_logprobs, f"an integer in [0, {MAX_TOP_LOGPROBS}], or null")
        if top and not req.logprobs:
            raise ConfigError("top_logprobs", req.top_logprobs, "null unless logprobs is true")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        _check_no_ops(req)
    tools = tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls) if not isinstance(req, CompletionRequest) else None
    ext = req.decodekit or DecodekitOptions()
    given = _top_level(req, ext)
    settings: dict = {"max_new_tokens": max_tokens if max_tokens is not None else default_max_tokens}
    if top:
        settings["top_logprobs"] = top
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            settings[name] = getattr(req, name)
    if req.logit_bias:
        try:
            settings["logit_bias"] = {int(token): bias for token, bias in req.logit_bias.items()}
        except ValueError:
            raise ConfigError("logit_bias", req.logit_bias, "a map from token ids (as strings, e.g. \"50256\") to biases in [-100, 100]") from None
    if req.stop is not None:
        settings["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    for source, target in (("min_tokens", "min_new_tokens"), ("repetition_penalty", "repetition_penalty")):
        if given[source] is not None:
            settings[target] = given[source]
    if ext.no_repeat_ngram_size is not None:
        settings["no_repeat_ngram_size"] = ext.no_repeat_ngram_size
    if req.stop_token_ids:
        settings["stop_token_ids"] = tuple(req.stop_token_ids)
    if req.ignore_eos:  # vLLM's: decode past the model's EOS (stop_token_ids still end it)
        settings["eos_token_ids"] = ()
    if req.include_stop_str_in_output is not None:
        settings["include_stop_str_in_output"] = req.include_stop_str_in_output
    # sampling warpers; top-k and min-p never drop the most likely token, so greedy is unchanged
    warpers = {name: value for name, value in (("top_k", given["top_k"]), ("min_p", given["min_p"]), ("typical_p", ext.typical_p)) if value is not None}
    if warpers.get("top_k") is not None and warpers["top_k"] <= 0:  # vLLM's -1 (and 0): no top-k
        warpers["top_k"] = None
    n = req.n
    kind = ext.strategy or ("greedy" if req.temperature == 0 else "sample")
    beam = kind in ("beam", "diverse_beam")
    if beam:
        for name in ("temperature", "top_p"):
            if getattr(req, name) is not None:
                raise ConfigError(name, getattr(req, name), f"null with decodekit.strategy={kind!r} (beam searches do not sample)")
        if req.seed is not None:
            raise ConfigError("seed", req.seed, f"null with decodekit.strategy={kind!r} (beam searches are deterministic)")
        for name, value in warpers.items():
            raise ConfigError(name, value, f"null with decodekit.strategy={kind!r} (a sampling warper; beam searches do not sample)")
        if "stop" in settings and kind == "diverse_beam":
            raise ConfigError("stop", req.stop, f"null with decodekit.strategy={kind!r}: stop strings work with greedy, sampling and beam")
    else:
        for name in ("num_beams", "num_groups", "length_penalty", "early_stopping", "diversity_strength", "diversity"):
            if getattr(ext, name) is not None:
                raise ConfigError(f"decodekit.{name}", getattr(ext, name), "only with decodekit.strategy 'beam' or 'diverse_beam'")
    speculative = decodekit.Speculative(ext.speculative) if ext.speculative else None
    if speculative is not None and beam:
        raise ConfigError("decodekit.speculative", ext.speculative, "greedy or sampling (not beam searches)")
    if kind == "greedy":
        if n != 1:
            raise ConfigError("n", n, "1 with temperature 0 (greedy has one output); use temperature > 0 or decodekit.strategy 'beam'")
        if req.top_p is not None and req.top_p != 1:
            raise ConfigError("top_p", req.top_p, "1 or null with temperature 0 (greedy)")
        if ext.typical_p is not None and ext.typical_p != 1:
            raise ConfigError("typical_p", ext.typical_p, "1 or null with temperature 0 (greedy)")
        decodekit.Sampling(**warpers).validate()  # their values checked all the same
        strategy = decodekit.Greedy(speculative=speculative)
    elif kind == "sample":
        temperature = 1.0 if req.temperature is None else req.temperature
        if temperature == 0:
            raise ConfigError("temperature", 0, "> 0 with decodekit.strategy 'sample'")
        strategy = decodekit.Sampling(temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p, n=n, seed=req.seed, speculative=speculative, **warpers)
    elif kind == "beam":
        beams = ext.num_beams if ext.num_beams is not None else max(n, 4)
        extra = {k: v for k, v in (("length_penalty", ext.length_penalty), ("early_stopping", ext.early_stopping)) if v is not None}
        strategy = decodekit.BeamSearch(num_beams=beams, num_return_sequences=n, **extra)
    else:
        beams = ext.num_beams if ext.num_beams is not None else max(n, 4)
        groups = ext.num_groups if ext.num_groups is not None else (2 if beams % 2 == 0 else 1)
        extra = {
            k: v
            for k, v in (("length_penalty", ext.length_penalty), ("early_stopping", ext.early_stopping), ("diversity_strength", ext.diversity_strength), ("diversity", ext.diversity))
            if v is not None
        }
        strategy = decodekit.DiverseBeamSearch(num_beams=beams, num_groups=groups, num_return_sequences=n, **extra)
    return Decoding(strategy, settings, _constraint(req, ext, tools), n, beam, tools)


def _constraint(req, ext, tools: ToolPlan | None = None):
    from decodekit.constraints import Catalog, Grammar, JsonSchema, Regex

    chosen = []
    if tools is not None and tools.calls:
        if req.stop:
            raise ConfigError("stop", req.stop, f"null with tool_choice={req.tool_choice!r} (a call ends where its JSON does)")
        chosen.append(("tool_choice", JsonSchema(tools.schema())))
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        chosen.append(("response_format", JsonSchema({"type": "object"})))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ConfigError("response_format.json_schema.schema", None, "a JSON Schema")
        chosen.append(("response_format", JsonSchema(fmt.json_schema.schema_)))
    for name, make in (("regex", Regex), ("grammar", Grammar), ("catalog", Catalog)):
        value = getattr(ext, name)
        if value is not None:
            chosen.append((f"decodekit.{name}", make(value)))
    # vLLM's structured-output fields (a JSON Schema as an object or its JSON text; a Lark grammar)
    if req.guided_json is not None:
        schema = req.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise ConfigError("guided_json", req.guided_json[:80], "a JSON Schema, as an object or as its JSON text") from None
        chosen.append(("guided_json", JsonSchema(schema)))
    for name, make in (("guided_regex", Regex), ("guided_choice", Catalog), ("guided_grammar", Grammar)):
        value = getattr(req, name)
        if value is not None:
            chosen.append((name, make(value)))
    if len(chosen) > 1:
        raise ConfigError(chosen[1][0], "...", f"one constraint per request (already {chosen[0][0]})")
    return chosen[0][1] if chosen else None
