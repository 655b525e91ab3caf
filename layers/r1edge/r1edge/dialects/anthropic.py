"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

An adapter around the one chat pipeline (:mod:`r1edge.dialects.pipeline`): a Messages request is
checked and translated into an OpenAI chat completion request (:func:`to_chat`), answered by the
router's pipeline (keys and limits, cache, routing, cascade, retries, unchanged), and the chat
completion — or its SSE chunks — is translated back into a ``message`` object (:func:`to_message`)
or Anthropic's stream events (:func:`message_events`). Errors, the pipeline's included, leave in
Anthropic's shape (:func:`anthropic_error`).

Rules and shapes follow Anthropic's API reference pages "Messages" (``POST /v1/messages``),
"Streaming Messages", "Count Message tokens", "Errors" and "Extended thinking"; the SDK types
(``anthropic.types.Message``, ``RawMessageStreamEvent``) were read to match field for field.

What is refused (400 ``invalid_request_error``, the message naming the field, no upstream call):
content blocks other than ``text``, ``tool_use``, ``tool_result`` (and ``thinking`` /
``redacted_thinking`` in assistant turns, which are dropped: R1 must not be sent its own reasoning
back) — so images, documents, search results; server tools (a tool ``type`` other than
``custom``); ``mcp_servers``; ``output_config.format`` (structured outputs). ``metadata``,
``cache_control``, ``service_tier``, ``output_config.effort`` and unknown fields are accepted and
ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from uuid import uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from r1edge.dialects.chatstream import chat_events
from r1edge.dialects.pipeline import pipeline_of
from r1edge.protocol import web
from r1edge.protocol.errors import OpenAIError, quote
from r1edge.protocol.sse import SSE_HEADERS
from r1edge.protocol.tokens import estimate_prompt_tokens
from r1edge.protocol.validation import parse_json_body, validate_chat_request
from r1edge.routing.config import AUTO_MODEL, MODEL_TIERS, TIER_MODELS, RoutingConfig

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

#: Anthropic's error ``type`` for each HTTP status (API reference, "Errors"); any other status
#: below 500 is an ``invalid_request_error``, any other from 500 up an ``api_error``.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
#: Anthropic's "overloaded" status (API reference, "Errors": 529 ``overloaded_error``), which
#: r1edge's own 503 ``overloaded`` becomes on this route.
OVERLOADED = 529

#: Most ``stop_sequences`` (the chat pipeline's ``stop`` takes at most 4, as OpenAI's does).
MAX_STOP_SEQUENCES = 4
#: Smallest ``thinking.budget_tokens`` (API reference, "Messages": "Must be ≥1024 and less than
#: max_tokens").
MIN_THINKING_BUDGET = 1024

#: ``finish_reason`` of a chat completion → Anthropic ``stop_reason``.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class AnthropicError(Exception):
    """An error answered in Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.

    Attributes:
        status: HTTP status.
        type: Anthropic's error type (:data:`ERROR_TYPES`).
        message: the text for the client.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """``{"type": "error", "error": {"type": ..., "message": ...}}``."""
        return error_body(self.type, self.message)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error object (API reference, "Errors")."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def invalid(message: str) -> AnthropicError:
    """A 400 ``invalid_request_error``."""
    return AnthropicError(400, message)


def anthropic_error(exc: OpenAIError) -> AnthropicError:
    """One of r1edge's OpenAI-shaped errors as Anthropic's: the same status and message (with
    ``param`` named when the message does not), except 503 ``overloaded`` → 529
    ``overloaded_error``; ``Retry-After`` and other headers kept."""
    status = OVERLOADED if exc.status == 503 else exc.status
    message = exc.message
    if exc.param and exc.param not in message:
        message = f"{exc.param}: {message}"
    return AnthropicError(status, message, exc.headers)


def error_response(exc: AnthropicError) -> JSONResponse:
    """The JSON error response of ``exc`` (its status and headers)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# --- requests ---


def _text_of(blocks: Any, where: str) -> str:
    """The text of a string or a list of ``text`` blocks (joined with newlines)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise invalid(f"{where}: expected a string or a list of content blocks.")
    texts = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise invalid(f"{at}.type: only text blocks are supported here, got {quote(kind)}.")
        if not isinstance(block.get("text"), str):
            raise invalid(f"{at}.text: expected a string.")
        texts.append(block["text"])
    return "\n".join(texts)


def _user_turn(content: Any, at: str) -> list[dict[str, Any]]:
    """A user turn as chat messages: its ``tool_result`` blocks as ``tool`` messages first (they
    must follow the assistant's ``tool_calls``), then its text as one ``user`` message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise invalid(f"{at}.content: expected a string or a list of content blocks.")
    tools: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        where = f"{at}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise invalid(f"{where}.text: expected a string.")
            texts.append(block["text"])
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise invalid(f"{where}.tool_use_id: expected a non-empty string.")
            result = block.get("content", "")
            text = _text_of(result if result is not None else "", f"{where}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
        else:
            raise invalid(
                f"{where}.type: {quote(kind)} content blocks are not supported here (text and tool_result are)."
            )
    if texts or not tools:
        tools.append({"role": "user", "content": "\n".join(texts)})
    return tools


def _assistant_turn(content: Any, at: str) -> dict[str, Any]:
    """An assistant turn as one chat message: text joined, ``tool_use`` blocks as ``tool_calls``;
    ``thinking`` and ``redacted_thinking`` blocks dropped."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise invalid(f"{at}.content: expected a string or a list of content blocks.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{at}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise invalid(f"{where}.text: expected a string.")
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"{where}.id: expected a non-empty string.")
            if not isinstance(name, str) or not name:
                raise invalid(f"{where}.name: expected a non-empty string.")
            if not isinstance(arguments, dict):
                raise invalid(f"{where}.input: expected an object.")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise invalid(f"{where}.type: {quote(kind)} content blocks are not supported here (text and tool_use are).")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as chat messages."""
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: expected a non-empty list of messages.")
    for i, message in enumerate(messages):
        at = f"messages.{i}"
        if not isinstance(message, dict):
            raise invalid(f"{at}: expected an object.")
        role = message.get("role")
        if "content" not in message:
            raise invalid(f"{at}.content: Field required.")
        if role == "user":
            out.extend(_user_turn(message["content"], at))
        elif role == "assistant":
            out.append(_assistant_turn(message["content"], at))
        else:
            raise invalid(f"{at}.role: expected 'user' or 'assistant', got {quote(role)}.")
    return out


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    """``tools`` → OpenAI function tools, ``tool_choice`` → ``tool_choice`` (and
    ``parallel_tool_calls``), into ``chat``."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools: expected a list of tools.")
        functions = []
        for i, tool in enumerate(tools):
            at = f"tools.{i}"
            if not isinstance(tool, dict):
                raise invalid(f"{at}: expected an object.")
            if tool.get("type") not in (None, "custom"):
                raise invalid(
                    f"{at}.type: server tools ({quote(tool.get('type'))}) are not supported; define a custom tool."
                )
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not name:
                raise invalid(f"{at}.name: expected a non-empty string.")
            if not isinstance(schema, dict):
                raise invalid(f"{at}.input_schema: expected a JSON schema object.")
            function: dict[str, Any] = {"name": name, "parameters": schema}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
        if functions:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        if not isinstance(choice.get("name"), str) or not choice["name"]:
            raise invalid("tool_choice.name: expected the name of a tool.")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise invalid(f"tool_choice.type: expected 'auto', 'any', 'tool' or 'none', got {quote(kind)}.")
    if choice.get("disable_parallel_tool_use") is True and "tools" in chat:
        chat["parallel_tool_calls"] = False


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"{name}: expected a number, got {quote(value)}.")
    if not low <= value <= high:
        raise invalid(f"{name}: must be between {low:g} and {high:g}, got {quote(value)}.")
    return value


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_model(model: Any, aliases: Mapping[str, str]) -> str:
    """The public model name (``auto``, ``edge``, ``deepseek-r1``) a requested ``model`` routes
    to: itself when public, else its target in the routing config's ``aliases``.

    Raises:
        AnthropicError: 400 when ``model`` is missing or not a string; 404 ``not_found_error``
            when it is neither public nor an alias.
    """
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required (a model name such as 'auto', 'edge' or 'deepseek-r1').")
    if model in MODEL_TIERS:
        return model
    if model in aliases:
        return aliases[model]
    names = ", ".join([*MODEL_TIERS, *aliases])
    raise AnthropicError(404, f"model: {quote(model)} is not a model served here. Use one of: {names}.")


def thinking_of(body: dict[str, Any], max_tokens: int | None) -> tuple[bool, bool]:
    """Whether extended thinking was asked for, and whether its text goes back.

    ``thinking: {"type": "enabled", "budget_tokens": n}``, ``{"type": "adaptive"}`` or
    ``{"type": "between_tools"}`` ask for it (the SDK's ``ThinkingConfigParam``); with
    ``"display": "omitted"`` no thinking text is returned. ``{"type": "disabled"}`` or absent: no.

    Returns:
        ``(asked, shown)``.

    Raises:
        AnthropicError: 400 for another type, or a ``budget_tokens`` that is not an integer
            ≥ 1024 and below ``max_tokens`` (API reference, "Messages", ``thinking``).
    """
    thinking = body.get("thinking")
    if thinking is None:
        return False, False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return False, False
    if kind not in ("enabled", "adaptive", "between_tools"):
        raise invalid(f"thinking.type: expected 'enabled', 'adaptive' or 'disabled', got {quote(kind)}.")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not _int(budget) or budget < MIN_THINKING_BUDGET:
            raise invalid(f"thinking.budget_tokens: expected an integer >= {MIN_THINKING_BUDGET}, got {quote(budget)}.")
        if max_tokens is not None and budget >= max_tokens:
            raise invalid(f"thinking.budget_tokens: must be less than max_tokens ({max_tokens}), got {budget}.")
    return True, thinking.get("display") != "omitted"


def to_chat(body: Any, aliases: Mapping[str, str], *, count_only: bool = False) -> tuple[dict[str, Any], bool]:
    """Check a Messages request and translate it into a chat completion request body.

    Args:
        body: the decoded JSON body.
        aliases: the routing config's ``aliases`` (client model name → public model name).
        count_only: a ``count_tokens`` request (no ``max_tokens`` required).

    Returns:
        ``(chat body, thinking)``: the chat body has ``model`` (public; ``deepseek-r1`` when
        thinking was asked of ``auto``), ``messages``, ``max_tokens``, ``stream`` (with
        ``stream_options.include_usage``), ``stop``, ``temperature``, ``top_p``, ``top_k``,
        ``tools``, ``tool_choice``; ``thinking`` says whether thinking blocks go back (thinking
        asked for, its display not ``omitted``).

    Raises:
        AnthropicError: 400 naming the field at fault, 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = resolve_model(body.get("model"), aliases)
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_only:
        raise invalid("max_tokens: Field required.")
    if max_tokens is not None and (not _int(max_tokens) or max_tokens < 1):
        raise invalid(f"max_tokens: expected an integer >= 1, got {quote(max_tokens)}.")
    if body.get("mcp_servers"):
        raise invalid("mcp_servers: MCP servers are not supported.")
    output = body.get("output_config")
    if isinstance(output, dict) and output.get("format") is not None:
        raise invalid("output_config.format: structured outputs are not supported.")
    asked, thinking = thinking_of(body, max_tokens)
    if asked and model == AUTO_MODEL:
        model = TIER_MODELS["cluster"]
    chat: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: expected a boolean.")
    if stream and not count_only:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise invalid("stop_sequences: expected a list of non-empty strings.")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise invalid(f"stop_sequences: at most {MAX_STOP_SEQUENCES} are supported here, got {len(stops)}.")
        if stops:
            chat["stop"] = stops
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = _number(body, name, 0.0, high)
        if value is not None:
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not _int(top_k) or top_k < 0:
            raise invalid(f"top_k: expected an integer >= 0, got {quote(top_k)}.")
        chat["top_k"] = top_k
    _tools(body, chat)
    return chat, thinking


# --- answers ---


def new_id(prefix: str) -> str:
    """A new id: ``msg_…`` for messages, ``toolu_…`` for tool uses (24 hex digits)."""
    return f"{prefix}_{uuid4().hex[:24]}"


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON text as ``input``: the object it encodes; anything else
    (not JSON, not an object) kept whole as ``{"_raw_arguments": text}``, never dropped."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def stop_reason_of(finish_reason: Any, matched: Any, stops: list[str]) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` from a choice's ``finish_reason`` (:data:`STOP_REASONS`;
    absent → ``end_turn``) and the engine's matched stop string (vLLM's choice ``stop_reason``):
    ``stop_sequence`` when it is one of ``stops``."""
    if finish_reason == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn", None


def _usage(usage: Any, input_estimate: int, output_estimate: int) -> dict[str, int]:
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return {
        "input_tokens": prompt if _int(prompt) else input_estimate,
        "output_tokens": completion if _int(completion) else output_estimate,
    }


def to_message(
    completion: dict[str, Any],
    model: str,
    thinking: bool,
    stops: list[str],
    input_estimate: int,
    chars_per_token: float,
) -> dict[str, Any]:
    """A chat completion as a ``message`` object (API reference, "Messages", response).

    Args:
        completion: the chat completion (its first choice is used; ``n`` is never asked).
        model: the model name as the client asked for it.
        thinking: whether ``reasoning_content`` becomes a ``thinking`` block (``signature: ""``).
        stops: the request's ``stop_sequences``.
        input_estimate: input tokens when the completion has no ``usage``.
        chars_per_token: for the output estimate when the completion has no ``usage``.

    Returns:
        ``{"id": "msg_…", "type": "message", "role": "assistant", "model", "content": [thinking?,
        text?, tool_use…], "stop_reason", "stop_sequence", "usage": {"input_tokens",
        "output_tokens"}}``.
    """
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    chars = 0
    reasoning = message.get("reasoning_content")
    if thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        chars += len(reasoning)
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
        chars += len(text)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu"),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
        chars += len(str(function.get("arguments") or ""))
    stop_reason, stop_sequence = stop_reason_of(choice.get("finish_reason"), choice.get("stop_reason"), stops)
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(completion.get("usage"), input_estimate, math.ceil(chars / chars_per_token)),
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: ``event: <name>`` and its JSON ``data`` (API reference,
    "Streaming Messages")."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def stream_error(message: str) -> bytes:
    """The ``error`` event that ends a cut stream (no ``message_stop`` follows)."""
    return event("error", error_body("api_error", message))


async def message_events(
    chunks: AsyncIterator[bytes],
    model: str,
    thinking: bool,
    stops: list[str],
    input_estimate: int,
    chars_per_token: float,
) -> AsyncIterator[bytes]:
    """A chat completion SSE stream as Anthropic's stream events, chunk by chunk.

    ``message_start``; for each run of reasoning (when ``thinking``), text or one tool call a
    ``content_block_start``, its ``content_block_delta`` events (``thinking_delta``,
    ``text_delta``, ``input_json_delta``) and ``content_block_stop``; then ``message_delta``
    (``stop_reason``, ``stop_sequence``, ``usage`` with ``input_tokens`` and ``output_tokens``)
    and ``message_stop``. A ``: keep-alive`` comment becomes a ``ping`` event. A stream that ends
    with an error event (``upstream_stream_truncated``) or without ``data: [DONE]`` ends with an
    ``error`` event instead of ``message_delta``/``message_stop``: never a normal end.

    Args:
        chunks: SSE bytes of chat completion chunks, as the pipeline answers.
        model: the model name as the client asked for it.
        thinking, stops, input_estimate, chars_per_token: as for :func:`to_message`.
    """
    yield event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_estimate, "output_tokens": 0},
            },
        },
    )
    index = -1
    kind: str | None = None  # the open block's type
    tool_index: Any = None  # the open tool_use block's tool_calls index
    tool_id: Any = None  # and its id
    finish: Any = None
    matched: Any = None
    usage: Any = None
    chars = 0

    def close() -> list[bytes]:
        nonlocal kind
        if kind is None:
            return []
        kind = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def open_block(block: dict[str, Any]) -> list[bytes]:
        nonlocal index, kind
        out = close()
        index += 1
        kind = block["type"]
        out.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        return out

    def delta(body: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})

    async with chat_events(chunks) as events:
        async for item in events:
            if item.kind == "keep-alive":
                yield event("ping", {"type": "ping"})
                continue
            if item.kind == "done":
                for out in close():
                    yield out
                stop_reason, stop_sequence = stop_reason_of(finish, matched, stops)
                yield event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                        "usage": _usage(usage, input_estimate, math.ceil(chars / chars_per_token)),
                    },
                )
                yield event("message_stop", {"type": "message_stop"})
                return
            if item.kind != "chunk":  # an error event, an unreadable one, or the end without [DONE]
                ended = item.kind == "ended"
                detail = "The upstream stream " + ("ended" if ended else "failed") + " before it was complete."
                yield stream_error(item.error_message(detail))
                return
            obj = item.data or {}
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            for choice in obj.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                if choice.get("finish_reason") is not None:
                    finish, matched = choice["finish_reason"], choice.get("stop_reason")
                part = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                reasoning = part.get("reasoning_content")
                if thinking and isinstance(reasoning, str) and reasoning:
                    if kind != "thinking":
                        for out in open_block({"type": "thinking", "thinking": "", "signature": ""}):
                            yield out
                    yield delta({"type": "thinking_delta", "thinking": reasoning})
                    chars += len(reasoning)
                text = part.get("content")
                if isinstance(text, str) and text:
                    if kind != "text":
                        for out in open_block({"type": "text", "text": ""}):
                            yield out
                    yield delta({"type": "text_delta", "text": text})
                    chars += len(text)
                for call in part.get("tool_calls") or []:
                    if not isinstance(call, dict):
                        continue
                    function = call.get("function") if isinstance(call.get("function"), dict) else {}
                    call_id = call.get("id")
                    fresh = kind != "tool_use" or call.get("index", tool_index) != tool_index
                    if fresh or (call_id and call_id != tool_id):  # some engines repeat the id
                        tool_index, tool_id = call.get("index"), call_id
                        block = {
                            "type": "tool_use",
                            "id": call_id or new_id("toolu"),
                            "name": function.get("name") or "",
                            "input": {},
                        }
                        for out in open_block(block):
                            yield out
                    arguments = function.get("arguments")
                    if isinstance(arguments, str) and arguments:
                        yield delta({"type": "input_json_delta", "partial_json": arguments})
                        chars += len(arguments)


# --- handlers ---


async def _read(request: Request) -> tuple[Any, RoutingConfig]:
    pipeline = pipeline_of(request)
    gateway = await pipeline.gateway(request)
    raw = await web.read_body(request, gateway.config.max_body_bytes)
    return parse_json_body(raw, gateway.config.max_json_depth), gateway.config


def _not_post(request: Request) -> Response | None:
    if request.method == "POST":
        return None
    error = AnthropicError(405, f"Method {quote(request.method)} is not allowed for {quote(request.url.path)}.")
    error.headers["Allow"] = "POST"
    return error_response(error)


async def messages(request: Request) -> Response:
    """``POST /v1/messages`` (API reference, "Messages"): a ``message`` object, or its stream."""
    refused = _not_post(request)
    if refused is not None:
        return refused
    try:
        body, config = await _read(request)
        chat_body, thinking = to_chat(body, config.aliases)
        chat = validate_chat_request(chat_body)
        asked = body["model"]
        stops = chat_body.get("stop") or []
        cpt = config.classifier.chars_per_token
        estimate = estimate_prompt_tokens(chat.messages, cpt)
        routed = await pipeline_of(request).answer(request, chat)
    except AnthropicError as exc:
        return error_response(exc)
    except OpenAIError as exc:
        return error_response(anthropic_error(exc))
    if isinstance(routed, Response):
        return routed
    if routed.stream is not None:
        return web.ClosingStreamingResponse(
            message_events(routed.stream, asked, thinking, stops, estimate, cpt),
            media_type="text/event-stream",
            headers={**routed.headers(), **SSE_HEADERS},
        )
    message = to_message(routed.completion or {}, asked, thinking, stops, estimate, cpt)
    return JSONResponse(message, headers=routed.headers())


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens`` (API reference, "Count Message tokens"):
    ``{"input_tokens": n}``, r1edge's estimate (:func:`~r1edge.protocol.tokens.estimate_prompt_tokens`
    over the translated messages; tool definitions are not counted)."""
    refused = _not_post(request)
    if refused is not None:
        return refused
    try:
        body, config = await _read(request)
        chat_body, _ = to_chat(body, config.aliases, count_only=True)
        chat = validate_chat_request(chat_body)
    except AnthropicError as exc:
        return error_response(exc)
    except OpenAIError as exc:
        return error_response(anthropic_error(exc))
    return JSONResponse({"input_tokens": estimate_prompt_tokens(chat.messages, config.classifier.chars_per_token)})


class _AnyMethod:
    """A handler as a plain ASGI app, so Starlette routes every method to it (a function
    endpoint gets ``GET`` only, and a wrong method Starlette's own 405 in the OpenAI shape)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def routes() -> list[Route]:
    """The routes to mount: ``/v1/messages`` and ``/v1/messages/count_tokens`` (every method is
    routed here, so a wrong one gets Anthropic's error shape: 405 with ``Allow: POST``)."""
    return [Route(MESSAGES_PATH, _AnyMethod(messages)), Route(COUNT_TOKENS_PATH, _AnyMethod(count_tokens))]
