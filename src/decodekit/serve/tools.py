"""Function calling (``tools`` and ``tool_choice``) as constrained decoding.

A request that makes the model call a tool gets its output constrained to the call's JSON
Schema, so every call it returns parses and validates:

- ``tool_choice: {"type": "function", "function": {"name": N}}``: the output is the arguments
  of ``N`` (its ``parameters`` schema);
- ``tool_choice: "required"``: the output is a JSON array of one or more
  ``{"name": ..., "arguments": ...}`` calls, each one of the tools with its own arguments
  (exactly one call with ``parallel_tool_calls: false``);
- ``tool_choice: "none"``: no call; the tools are still shown to the model (the chat template's
  ``tools``).

``"auto"`` (OpenAI's default when tools are given) lets the model choose between text and a
call, which needs a parser of the model's own tool-call format; this server has none, so it
is a 400 naming ``tool_choice`` rather than a call never recognised.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from decodekit.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
"""A function without ``parameters`` takes none (as OpenAI reads it)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: Any  # a JSON Schema (a dict, or a boolean schema)

    def spec(self) -> dict:
        """The tool as chat templates take it (``tools=[...]``)."""
        function = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...]
    choice: str | None  # the named function, "required", or None ("none": no call)
    parallel: bool

    @property
    def calls(self) -> bool:
        return self.choice is not None

    def schema(self) -> Any:
        """The JSON Schema the output is constrained to. For ``required``, each tool's
        parameters become a definition of the root (``#/$defs/tool<i>``), their local
        references rewritten to point into it, so ``$defs``, ``definitions`` and recursion
        (``#``) resolve as they do in the tool's own schema."""
        if self.choice != "required":
            return next(t.parameters for t in self.tools if t.name == self.choice)
        defs = {f"tool{i}": _rebased(t.parameters, f"#/$defs/tool{i}") for i, t in enumerate(self.tools)}
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": {"$ref": f"#/$defs/tool{i}"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for i, t in enumerate(self.tools)
        ]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        return {"$defs": defs, "type": "array", "items": call, "minItems": 1, **({} if self.parallel else {"maxItems": 1})}

    def tool_calls(self, text: str) -> list[dict] | None:
        """The calls of a finished output (OpenAI's ``tool_calls``), or None when it is not
        a complete call (cut short by ``max_tokens``)."""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if self.choice != "required":
            return [_call(self.choice, text)]
        return [_call(call["name"], json.dumps(call["arguments"], ensure_ascii=False)) for call in value]


    def tool_calls_unfinished(self, text: str) -> list[dict]:
        """A named call cut short: its arguments so far (not valid JSON)."""
        return [_call(self.choice, text)]


def _rebased(schema: Any, root: str) -> Any:
    """``schema`` with every local ``$ref`` (``#``, ``#/...``) pointing below ``root``."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = root + value[1:]
            else:
                out[key] = _rebased(value, root)
        return out
    if isinstance(schema, list):
        return [_rebased(v, root) for v in schema]
    return schema


def _call(name: str, arguments: str) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_plan(tools: list[dict] | None, tool_choice, parallel_tool_calls: bool | None) -> ToolPlan | None:
    """The request's tools checked (each field named in its error), or None without any."""
    parsed = tuple(_tool(i, entry) for i, entry in enumerate(tools or []))
    names = [t.name for t in parsed]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"tools.{i}.function.name", name, "a name no other tool has")
    if tool_choice is None:
        tool_choice = "auto" if parsed else "none"
    if tool_choice == "none":
        return ToolPlan(parsed, None, True) if parsed else None
    if not parsed:
        raise ConfigError("tool_choice", tool_choice, "'none' or null when the request gives no tools")
    if tool_choice == "required":
        return ToolPlan(parsed, "required", parallel_tool_calls is not False)
    if tool_choice == "auto":
        raise ConfigError(
            "tool_choice",
            "auto",
            "'required', 'none' or {\"type\": \"function\", \"function\": {\"name\": ...}}: this server makes a call by "
            "constraining the output to it, and cannot tell a call from text in a free reply ('auto', the default with tools)",
        )
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type") != "function" or set(tool_choice) != {"type", "function"} or not isinstance(function, dict) or set(function) != {"name"}:
            raise ConfigError("tool_choice", tool_choice, '{"type": "function", "function": {"name": ...}}, "required" or "none"')
        if name not in names:
            raise ConfigError("tool_choice.function.name", name, f"one of the request's tools: {names}")
        return ToolPlan(parsed, name, True)
    raise ConfigError("tool_choice", tool_choice, "'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def request_tools(req) -> ToolPlan | None:
    """A chat request's tool plan; None without tools, for a completion, or when its tools
    are not valid (:func:`tool_plan` raises that error where the request is translated)."""
    if not hasattr(req, "tool_choice"):
        return None
    try:
        return tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls)
    except ConfigError:
        return None


def _tool(i: int, entry: Any) -> Tool:
    where = f"tools.{i}"
    if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(entry.get("function"), dict):
        raise ConfigError(where, entry, '{"type": "function", "function": {"name": ..., "parameters": {...}}}')
    if set(entry) != {"type", "function"}:
        raise ConfigError(f"{where}.{sorted(set(entry) - {'type', 'function'})[0]}", "...", "only type and function")
    function = entry["function"]
    unknown = set(function) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise ConfigError(f"{where}.function.{sorted(unknown)[0]}", "...", "name, description, parameters or strict")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.function.name", name, "1 to 64 letters, digits, underscores or dashes")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{where}.function.description", description, "a string")
    if function.get("strict") not in (None, True, False):
        raise ConfigError(f"{where}.function.strict", function.get("strict"), "true, false or null (calls always follow the schema here)")
    parameters = function.get("parameters", NO_ARGUMENTS)
    if not isinstance(parameters, (dict, bool)):
        raise ConfigError(f"{where}.function.parameters", parameters, "a JSON Schema object")
    if isinstance(parameters, dict) and parameters.get("type", "object") != "object":  # arguments are a JSON object
        raise ConfigError(f"{where}.function.parameters.type", parameters.get("type"), "'object' (a function's arguments are a JSON object)")
    return Tool(name, description, parameters)
