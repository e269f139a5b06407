"""Request and response models of the OpenAI API subset decodekit serves (pydantic), field by
field as OpenAI defines them. Unknown fields are refused (400 naming the field), never ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "2" is not 2, 1 is not true

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """``null`` for a field with a default is that default (OpenAI allows ``"n": null``)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            data = {k: v for k, v in data.items() if not (v is None and k in fields and fields[k].default is not None and not fields[k].is_required())}
        return data


class DecodekitOptions(Strict):
    """decodekit's extensions, one object on the request (``extra_body={"decodekit": ...}``)."""

    strategy: Literal["greedy", "sample", "beam", "diverse_beam"] | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | Literal["never"] | None = None
    num_groups: int | None = None
    diversity_strength: float | None = None
    diversity: str | None = None
    speculative: Literal["suffix", "ngram", "draft", "recycling"] | None = None
    regex: str | None = None
    grammar: str | None = None
    catalog: list[str] | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str = "schema"
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Sampling(Strict):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    decodekit: DecodekitOptions | None = None
    # vLLM's sampling fields, top-level as its server takes them (``extra_body``)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    guided_json: dict[str, Any] | bool | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class ToolCallFunction(Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, given back in a later turn
    tool_call_id: str | None = None  # a tool message: the call it answers
    # what OpenAI's reply messages carry besides (a reply given back as it came): null here
    refusal: None = None
    audio: None = None
    function_call: None = None
    annotations: list[dict[str, Any]] | None = None  # citations: metadata, not text the model reads


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # OpenAI fields that ask for nothing this server would do differently; accepted at those
    # values only (anything else is a 400 naming the field)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: None = None  # OpenAI's deprecated function calling: null only (use tools)
    function_call: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
