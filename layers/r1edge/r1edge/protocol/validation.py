"""Validation of OpenAI Chat Completions requests, before any upstream call.

The rules follow the OpenAI API reference for ``POST /v1/chat/completions``: every failure is an
:class:`~r1edge.protocol.errors.InvalidRequest` (HTTP 400) whose ``param`` names the field at fault, so a
client sees what to fix and no upstream ever receives a request we could have refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from r1edge.protocol.errors import InvalidRequest, quote
from r1edge.protocol.sse import MAX_JSON_DEPTH, JSONTooDeep, strict_loads

#: Roles the Chat Completions API accepts (``developer`` is the newer name for ``system``).
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: Content-part types we accept inside a content array; the tiers behind r1edge are text-only.
TEXT_PART_TYPES = frozenset({"text"})


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request.

    Attributes:
        body: the request object as sent (all fields kept, so unknown OpenAI fields can be
            forwarded upstream unchanged).
        model: requested model name; ``"auto"`` when absent.
        messages: the ``messages`` list.
        stream: whether an SSE stream was asked for.
        max_tokens: the completion-token limit (``max_completion_tokens`` wins over the older
            ``max_tokens``), or ``None`` when absent.
        temperature: sampling temperature in [0, 2], or ``None`` when absent.
    """

    body: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    temperature: float | None


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body as strict JSON (RFC 8259): ``NaN`` and ``Infinity`` are refused, and
    so are lone surrogates (``"\\ud800"`` is valid JSON syntax but not Unicode text, and could not
    be sent to any upstream as UTF-8), and values nested more than ``max_depth`` levels of arrays
    and objects (the body object is level 1; RFC 8259 §9 lets a parser limit nesting). The depth
    is checked right after decoding, without recursion, before anything else touches the value.

    Args:
        raw: the body, bytes.
        max_depth: most levels (the routing config's ``max_json_depth``; default
            :data:`~r1edge.protocol.sse.MAX_JSON_DEPTH`, 64, which the edge server uses).

    Raises:
        InvalidRequest: code ``json_too_deep`` when nested too deep (the message names the limit),
            ``invalid_json`` when the bytes are not valid JSON text.
    """
    try:
        body = strict_loads(raw, max_depth)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError on a lone surrogate
        return body
    except JSONTooDeep as exc:
        raise InvalidRequest(
            f"The JSON body of your request nests more than {exc.limit} levels of arrays and objects "
            "(the limit, max_json_depth).",
            code="json_too_deep",
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecode-, UnicodeDecode-, UnicodeEncodeError
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidRequest(
            f"'{name}' must be an integer, got {quote(value)}.",
            param=name,
            code="invalid_type",
        )
    if value < 1:
        raise InvalidRequest(f"'{name}' must be at least 1, got {quote(value)}.", param=name, code="invalid_value")
    return value


def _number_in(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise InvalidRequest(f"'{name}' must be a number, got {quote(value)}.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low:g} and {high:g}, got {quote(value)}.", param=name, code="invalid_value"
        )
    return float(value)


def _check_content(message: dict[str, Any], index: int) -> None:
    param = f"messages[{index}].content"
    role = message["role"]
    if "content" not in message or message["content"] is None:
        # Assistant turns that only carry tool calls have no content (OpenAI API reference).
        if role == "assistant":
            return
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    content = message["content"]
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            part_param = f"{param}[{j}]"
            if not isinstance(part, dict) or part.get("type") not in TEXT_PART_TYPES:
                raise InvalidRequest(
                    f"Invalid content part at '{part_param}': only text parts "
                    '({"type": "text", "text": "..."}) are supported.',
                    param=part_param,
                    code="invalid_type",
                )
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"'{part_param}.text' must be a string.", param=f"{part_param}.text", code="invalid_type"
                )
        return
    raise InvalidRequest(
        f"Invalid type for '{param}': expected a string or an array of text parts, got {type(content).__name__}.",
        param=param,
        code="invalid_type",
    )


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of message objects.", param="messages", code="invalid_type")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages", code="empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{i}]' must be an object.", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {quote(role)}. "
                f"Supported values are: {', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        _check_content(message, i)
    return messages


def _check_stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return
    raise InvalidRequest("'stop' must be a string or an array of up to 4 strings.", param="stop", code="invalid_type")


def validate_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body against the Chat Completions rules.

    Args:
        body: the decoded JSON value of the request.

    Returns:
        The validated :class:`ChatRequest`.

    Raises:
        InvalidRequest: with ``param`` set to the offending field — the body is not an object;
            ``messages`` is missing, empty or malformed; a message has no or an unknown role, or
            content of the wrong type; ``max_tokens``/``max_completion_tokens`` is not a JSON
            integer >= 1 (``null`` means absent); ``temperature`` is outside [0, 2]; ``top_p``
            outside [0, 1]; ``stream`` not a boolean; ``stop``, ``n`` or ``seed`` malformed.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    model = body.get("model")
    if model is None:
        model = "auto"
    elif not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    messages = _check_messages(body)
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    max_tokens = _positive_int(body, "max_tokens")
    max_completion_tokens = _positive_int(body, "max_completion_tokens")
    _positive_int(body, "n")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidRequest("'seed' must be an integer.", param="seed", code="invalid_type")
    temperature = _number_in(body, "temperature", 0.0, 2.0)
    _number_in(body, "top_p", 0.0, 1.0)
    _number_in(body, "presence_penalty", -2.0, 2.0)
    _number_in(body, "frequency_penalty", -2.0, 2.0)
    _check_stop(body)
    return ChatRequest(
        body=body,
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        temperature=temperature,
    )


def message_text(message: dict[str, Any]) -> str:
    """The text of one message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


#: Request fields forwarded upstream: the Chat Completions parameters of the OpenAI API reference,
#: plus the sampling extras every OpenAI-compatible engine behind r1edge takes (vLLM, SGLang,
#: llama.cpp: ``top_k``, ``min_p``, ``repetition_penalty``). Any other field is accepted (clients
#: send new ones) and dropped, unless the routing config's ``forward_fields`` names it.
FORWARDED_FIELDS = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "user",
        "reasoning_effort",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)


def upstream_body(body: dict[str, Any], extra_fields: list[str] | frozenset[str] = ()) -> dict[str, Any]:
    """The fields of ``body`` that may go upstream: :data:`FORWARDED_FIELDS` and ``extra_fields``."""
    return {k: v for k, v in body.items() if k in FORWARDED_FIELDS or k in extra_fields}
