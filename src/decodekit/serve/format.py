"""Prompts in, choices out: the chat format, and decodekit results as OpenAI choices,
chunks and ``logprobs`` objects."""

from __future__ import annotations

import codecs
import json
import math

from decodekit.serve.limits import APIError
from decodekit.serve.protocol import ChatCompletionRequest
from decodekit.serve.tools import ToolPlan, request_tools


def default_chat_prompt(messages: list[dict], tools: list[dict] | None = None) -> str:
    """The chat format of tokenizers without a chat template (the embedded models): each
    message as a ``# role`` line (``# role (name)`` with a name), its text and a blank line,
    then ``# assistant`` and a newline for the reply. Tools come first, as a ``# tools`` message of one JSON line per tool; an
    assistant's tool calls follow its text, one ``{"name", "arguments"}`` JSON line each."""
    head = "# tools\n" + "".join(json.dumps(t["function"], ensure_ascii=False) + "\n" for t in tools) + "\n" if tools else ""
    parts = []
    for m in messages:
        calls = "".join(json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False) + "\n" for c in m.get("tool_calls") or ())
        text = m["content"] + ("\n" if m["content"] and calls else "") + calls.rstrip("\n")
        who = f"{m['role']} ({m['name']})" if m.get("name") else m["role"]
        parts.append(f"# {who}\n{text}\n\n")
    return head + "".join(parts) + "# assistant\n"

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "constraint": "constraint"}
"""decodekit finish reasons -> the API's (``constraint``: the output does not satisfy the
request's constraint, never reported as ``stop``)."""


def api_finish(reason: str | None, count: int, limit: int) -> str | None:
    """A decodekit finish reason as the API's, for an output of ``count`` tokens under a limit
    of ``limit``: a constrained output that the limit cut short is ``length`` (what OpenAI
    clients check for, e.g. ``parse()`` raising ``LengthFinishReasonError``); one its
    constraint ended unsatisfied within the limit stays ``constraint``."""
    if reason == "constraint" and count >= limit:
        return "length"
    return FINISH.get(reason, reason) if reason is not None else None


def body_echo(body) -> bool:
    return bool(getattr(body, "echo", False))


def echo_text(pending) -> str:
    """The prompt as text, for ``echo`` (a prompt of token ids decoded)."""
    prompt = pending.prompt
    return prompt if isinstance(prompt, str) else pending.decoder.decode_text(pending.request.prompt) or ""


def completion_prompts(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    if not prompt:
        raise APIError(400, "prompt: an empty list; give a string, a list of strings or token ids", param="prompt")
    return list(prompt)


def chat_prompt(decoder, body: ChatCompletionRequest) -> str:
    tokenizer = decoder.tokenizer
    if tokenizer is None:
        raise APIError(400, "messages: this model has no tokenizer; use /v1/completions with token ids", param="messages")
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages.{i}.content: only text parts are supported", param=f"messages.{i}.content")
                texts.append(part["text"])
            content = "".join(texts)
        entry = {"role": message.role, "content": content or ""}
        if message.tool_calls:  # templates read arguments as a mapping where they parse
            entry["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}} for c in message.tool_calls]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        messages.append(entry)
    plan = request_tools(body)
    tools = [t.spec() for t in plan.tools] if plan is not None else None
    if not getattr(tokenizer, "chat_template", None):
        return default_chat_prompt(messages, tools)
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # the template's own checks (roles that must alternate, ...): the messages' fault
        raise APIError(400, f"messages: the model's chat template refused them: {type(error).__name__}: {str(error)[:300]}", param="messages") from None


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def chat_message(sequence, tools: ToolPlan | None, limit: int) -> tuple[dict, str | None]:
    """An output (``limit``: its ``max_tokens``) as an assistant message and its finish
    reason: a tool call (when the request makes one and the output is complete:
    ``tool_calls``, finish reason ``tool_calls``), else the text."""
    text = sequence.text or ""
    reason = api_finish(sequence.finish_reason, len(sequence.token_ids), limit)
    if tools is None or not tools.calls:
        return {"role": "assistant", "content": text}, reason
    calls = tools.tool_calls(text) if sequence.finish_reason in ("eos", "stop") else None
    if calls is None and tools.choice != "required" and reason == "length":
        calls = tools.tool_calls_unfinished(text)  # cut short: the arguments so far, as OpenAI does
    if calls is None:
        return {"role": "assistant", "content": text}, reason
    return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls" if reason == "stop" else reason


def finite(value):
    """``value`` with every non-finite float (a score of -inf, say) as None: JSON has no
    infinities, and a body with ``-Infinity`` in it is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def token_text(decoder, token: int) -> str:
    return decoder.tokenizer.decode([token]) if decoder.tokenizer is not None else str(token)


def text_offsets(decoder, token_ids, start: int = 0) -> list[int]:
    """Where each token's text begins, in characters from ``start``: the tokens' bytes
    decoded as one UTF-8 stream, so a token holding part of a character (a byte-level token)
    begins where that character does; special tokens (BOS) add no text."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    special = _special(decoder)
    offsets, at = [], start
    for token in token_ids:
        offsets.append(at)
        if not special(token):
            at += len(utf8.decode(bytes(token_bytes(decoder, token))))
    return offsets


def _special(decoder):
    """A test for special tokens (no text of their own)."""
    view = _ll_view(decoder)
    return view.is_special_token if view is not None else (lambda token: not decoder.decode_text([token]))


def token_bytes(decoder, token: int) -> list[int]:
    """A token's own bytes (a byte-level token's one byte, not U+FFFD's three), through
    llguidance's view of the tokenizer; the text's UTF-8 where it has none."""
    view = _ll_view(decoder)
    return list(view.decode_bytes([token])) if view is not None else list(token_text(decoder, token).encode("utf-8"))


def _ll_view(decoder):
    """llguidance's view of the decoder's tokenizer (built once, cached), or None without one."""
    from decodekit.constraints.grammar import ll_tokenizer
    from decodekit.errors import InputError

    try:
        return ll_tokenizer(decoder.tokenizer) if decoder.tokenizer is not None else None
    except (InputError, ValueError, TypeError):
        return None


def prompt_logprobs_object(decoder, prompt_ids, scored) -> dict:
    """The completions ``logprobs`` of an echoed prompt (``scored``: from
    ``prompt_logprobs``; the first token's log-prob is null, nothing conditions it)."""
    pieces = [token_text(decoder, t) for t in prompt_ids]
    offsets = text_offsets(decoder, prompt_ids)
    lps = [None if entry is None else entry[0] for entry in scored]
    tops = [None if entry is None else {token_text(decoder, t): lp for t, lp in entry[1]} for entry in scored]  # {} for logprobs 0
    return {"tokens": pieces, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def joined(first: dict | None, second: dict | None) -> dict | None:
    """Two completions ``logprobs`` objects, one after the other."""
    if first is None or second is None:
        return first or second
    return {k: list(first[k] or [None] * len(first["tokens"])) + list(second[k] or [None] * len(second["tokens"])) for k in first}


def sequence_logprobs(sequence, decoder, chat: bool, offset: int = 0):
    """A finished output's ``logprobs`` object, over the tokens of its text: an EOS that ended
    it is not part of the text, so not of its log-probs either."""
    ids, lps, tops = list(sequence.token_ids), list(sequence.token_logprobs), sequence.top_logprobs
    if sequence.finish_reason == "eos" and ids:
        ids, lps, tops = ids[:-1], lps[:-1], tops[:-1] if tops is not None else None
    return logprobs_object(ids, lps, tops, decoder, chat, offset)


def logprobs_object(token_ids, token_logprobs, top_logprobs, decoder, chat: bool, offset: int = 0):
    """OpenAI's ``logprobs`` object for these tokens (chat: ``content`` entries with their
    ``top_logprobs``; completions: parallel lists, ``top_logprobs`` as text -> log-prob maps)."""
    pieces = [token_text(decoder, t) for t in token_ids]
    if top_logprobs is not None:  # alternatives a constraint or processor ruled out (-inf) are none
        top_logprobs = [[t for t in top if math.isfinite(t.logprob)] if top else top for top in top_logprobs]
    tops = top_logprobs if top_logprobs is not None else [None] * len(pieces)
    if chat:
        def entry(token, piece, lp):
            return {"token": piece, "logprob": lp, "bytes": token_bytes(decoder, token)}

        return {"content": [
            {**entry(token, piece, lp), "top_logprobs": [entry(t.token_id, token_text(decoder, t.token_id), t.logprob) for t in top] if top else []}
            for token, piece, lp, top in zip(token_ids, pieces, token_logprobs, tops)
        ]}
    offsets = text_offsets(decoder, token_ids, offset)
    top_maps = [{} for _ in pieces]  # logprobs 0: no alternatives, one empty map per token
    if top_logprobs is not None:
        top_maps = [{token_text(decoder, t.token_id): t.logprob for t in top} for top in top_logprobs]
    return {"tokens": pieces, "token_logprobs": list(token_logprobs), "top_logprobs": top_maps, "text_offset": offsets}


def extension(sequence) -> dict:
    return {"score": sequence.score, "logprob": sequence.logprob, "group": sequence.group, "finish_reason": sequence.finish_reason, "token_ids": list(sequence.token_ids), "constraint": sequence.constraint}


def choice(index: int, pending, sequence, body, chat: bool, limit: int, tools: ToolPlan | None = None, prompt_part: dict | None = None) -> dict:
    """One choice of a response (``limit``: its ``max_tokens``; ``prompt_part``: an echoed
    prompt's log-probs)."""
    decoder = pending.decoder
    text = sequence.text or ""
    wants_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
    shift = len(echo_text(pending)) if not chat and body.echo else 0
    logprobs = joined(prompt_part, sequence_logprobs(sequence, decoder, chat, shift)) if wants_logprobs else None
    reason = api_finish(sequence.finish_reason, len(sequence.token_ids), limit)
    if chat:
        message, reason = chat_message(sequence, tools, limit)
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason, "decodekit": extension(sequence)}
    if body.echo:
        text = echo_text(pending) + text
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason, "decodekit": extension(sequence)}


def chunk_choice(index: int, text: str, delta, reason, sequence, chat: bool, logprobs=None) -> dict:
    extra = {"decodekit": extension(sequence)} if sequence is not None else {}
    if chat:
        return {"index": index, "delta": delta if text else {}, "logprobs": logprobs, "finish_reason": reason, **extra}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason, **extra}


def echoed_prompts(decoder, prompts: list, scored, n: int) -> tuple[list[dict], int]:
    """Choices of a completions request with ``echo`` and ``max_tokens`` 0 (scoring its
    prompts: nothing is decoded): each prompt ``n`` times, with its log-probs when asked
    (``scored``), finish reason ``length``; and the prompt tokens in all."""
    choices, tokens = [], 0
    for at, prompt in enumerate(prompts):
        ids = decoder.encode(prompt)
        tokens += len(ids)
        text = prompt if isinstance(prompt, str) else decoder.decode_text(ids) or ""
        logprobs = prompt_logprobs_object(decoder, *scored[at]) if scored is not None else None
        for _ in range(n):
            choices.append({"index": len(choices), "text": text, "logprobs": logprobs, "finish_reason": "length"})
    return choices, tokens
