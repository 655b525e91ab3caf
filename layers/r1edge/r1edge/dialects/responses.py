"""The OpenAI Responses API (``POST /v1/responses``), stateless, as an adapter around the chat pipeline.

A request is translated into an OpenAI chat completion request (:func:`chat_body`), answered by
the router's :class:`~r1edge.dialects.pipeline.ChatPipeline` (keys, limits, cache, routing, the
cascade, retries: all unchanged), and the answer translated back: a chat completion into a
``response`` object (:func:`response_of`), chat completion chunks into the typed semantic events
of a Responses stream (:class:`EventWriter`). Shapes follow the OpenAI API reference pages
"Responses — Create a model response", "The response object" and "Streaming events", and the
official SDK's types (``openai.types.responses``).

Stateless: there is no responses table, so ``store: true``, ``previous_response_id``,
``conversation``, ``prompt``, ``background: true`` and ``item_reference`` inputs are refused with
a 400 naming the field; so are built-in tools (web search, file search, computer use, …) and
non-text input parts. Errors are in OpenAI's shape (the router's), 4xx for bad input, raised
before any upstream call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from r1edge.dialects.chatstream import chat_events
from r1edge.dialects.pipeline import pipeline_of
from r1edge.protocol import web
from r1edge.protocol.errors import InvalidRequest, quote
from r1edge.protocol.sse import SSE_HEADERS
from r1edge.protocol.validation import parse_json_body, validate_chat_request

#: Roles an input message may have (API reference, "Create a model response", ``input``).
INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
#: Text content part types of an input message: ``input_text`` (any role), and ``output_text``
#: / ``refusal`` (an earlier assistant turn sent back as it came out).
TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})
#: Fields that need stored state, which r1edge does not keep (no responses table yet).
STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")
#: The public model that a ``reasoning`` request is routed to, unless the client named another.
REASONING_MODEL = "deepseek-r1"


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _text_of_parts(content: Any, param: str) -> str:
    """The text of an input message's ``content``: a string, or text parts joined by newlines.

    Raises:
        InvalidRequest: a part is not a text part (images, files, audio: the tiers are text-only).
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param, "invalid_type")
    texts = []
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in TEXT_PARTS:
            raise _bad(
                f"Content part type {quote(kind)} at '{part_param}.type' is not supported: only text parts "
                "(input_text) are; the models behind r1edge read text only.",
                f"{part_param}.type",
            )
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise _bad(f"'{part_param}.text' must be a string.", f"{part_param}.text", "invalid_type")
        texts.append(text)
    return "\n".join(texts)


def _messages_of_input(items: Any) -> list[dict[str, Any]]:
    """Chat messages from the ``input`` field (a string, or a list of input items).

    Items (API reference, "Create a model response", ``input``): messages (``type: message`` or
    none, with ``role`` and ``content``), ``function_call`` (an earlier tool call: merged into the
    assistant message before it), ``function_call_output`` (a ``tool`` message), ``reasoning``
    (dropped: DeepSeek's reasoning guide says earlier reasoning is not sent back).

    Raises:
        InvalidRequest: any other item type, a bad role, non-text content, a missing field.
    """
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input", "invalid_type")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{param}' must be an object.", param, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in INPUT_ROLES:
                raise _bad(
                    f"Invalid value for '{param}.role': {quote(role)}. "
                    f"Supported values are: {', '.join(sorted(INPUT_ROLES))}.",
                    f"{param}.role",
                )
            messages.append({"role": role, "content": _text_of_parts(item.get("content"), f"{param}.content")})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _bad(f"'{param}.{name}' must be a string.", f"{param}.{name}", "invalid_type")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"'{param}.call_id' must be a string.", f"{param}.call_id", "invalid_type")
            output = _text_of_parts(item.get("output"), f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue
        else:
            why = " (it needs stored responses, which r1edge does not keep)" if kind == "item_reference" else ""
            raise _bad(f"Input item type {quote(kind)} at '{param}.type' is not supported{why}.", f"{param}.type")
    if not messages:
        raise _bad("'input' holds no message.", "input")
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Chat ``tools`` from Responses function tools (``{type: function, name, description,
    parameters, strict}``). Built-in tools (``web_search``, ``file_search``, ``computer_use_preview``,
    ``code_interpreter``, ``mcp``, …) are refused: nothing here runs them."""
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array.", "tools", "invalid_type")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _bad(
                f"Tool type {quote(kind)} at 'tools[{i}].type' is not supported: only function tools are "
                "(built-in tools such as web_search, file_search and computer_use are not run here).",
                f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name", "invalid_type")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}.", "tool_choice"
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise _bad("'text' must be an object.", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _bad("'text.format' of type json_schema needs a 'name' and a 'schema' object.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad(f"Unsupported 'text.format.type': {quote(kind)}.", "text.format.type")


def chat_body(body: Any) -> dict[str, Any]:
    """Translate a Responses request body into a Chat Completions body.

    Mapping (API reference, "Create a model response"): ``instructions`` → a first ``system``
    message; ``input`` → messages (:func:`_messages_of_input`); ``max_output_tokens`` →
    ``max_tokens`` (tokens); ``temperature``, ``top_p``, ``parallel_tool_calls``, ``stream`` as
    they are; ``tools``/``tool_choice`` → chat tools; ``text.format`` → ``response_format``;
    ``reasoning`` → model ``deepseek-r1`` when the model is ``auto`` or absent (a client that
    names ``edge`` keeps it). ``metadata``, ``user``, ``include``, ``truncation``,
    ``service_tier`` are accepted and ignored. Streams ask for ``stream_options.include_usage``.

    Raises:
        InvalidRequest: with ``param`` naming the field — anything refused (see the module).
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    for name in ("store", "background"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"'{name}' must be a boolean.", name, "invalid_type")
    if body.get("store") is True:
        raise _bad(
            "'store': true is not supported: r1edge keeps no responses (stateless); send 'store': false.", "store"
        )
    for name in STATEFUL_FIELDS:
        if body.get(name) is not None:
            raise _bad(f"'{name}' is not supported: r1edge keeps no responses (stateless).", name)
    if body.get("background") is True:
        raise _bad("'background': true is not supported; use POST /v1/jobs for queued work.", "background")
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    messages = _messages_of_input(body["input"])
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string.", "instructions", "invalid_type")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"messages": messages}
    model = body.get("model")
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad("'reasoning' must be an object.", "reasoning", "invalid_type")
    if reasoning and reasoning.get("effort") not in (None, "none") and model in (None, "auto"):
        model = REASONING_MODEL
    if model is not None:
        chat["model"] = model
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1:
            raise _bad(f"'max_output_tokens' must be an integer >= 1, got {quote(max_output)}.", "max_output_tokens")
        chat["max_tokens"] = max_output
    for name in ("temperature", "top_p", "parallel_tool_calls", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("tools") is not None:
        tools = _tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        response_format = _response_format(body["text"])
        if response_format is not None:
            chat["response_format"] = response_format
    if chat.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}
    return chat


def usage_of_chat(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``, their
    details; tokens) from a chat completion's ``usage``, or ``None`` when there is none."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _envelope(body: dict[str, Any], rid: str, created: int, model: str) -> dict[str, Any]:
    """The fields of a ``response`` object that echo the request (API reference, "The response
    object"), ``status`` ``in_progress``, no output yet."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": body.get("temperature"),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "metadata": body["metadata"] if isinstance(body.get("metadata"), dict) else {},
    }


def _finish(response: dict[str, Any], finish_reason: Any) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def _reasoning_item(text: str) -> dict[str, Any]:
    return {"id": _id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": _id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": _id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_of(completion: dict[str, Any], body: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``response`` object from a chat completion (its first choice).

    Output items, in order: a ``reasoning`` item whose ``summary`` is one ``summary_text`` of
    R1's ``reasoning_content`` (when present); a ``message`` item with one ``output_text`` part
    (when there is content, or no tool call); one ``function_call`` item per tool call.
    ``finish_reason: length`` gives ``status: incomplete`` with ``incomplete_details.reason:
    max_output_tokens``.
    """
    response = _envelope(body, _id("resp"), int(completion.get("created") or time.time()), model)
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    _finish(response, choice.get("finish_reason"))
    item_status = "incomplete" if response["status"] == "incomplete" else "completed"
    output = response["output"]
    if message.get("reasoning_content"):
        output.append(_reasoning_item(message["reasoning_content"]))
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        output.append(_message_item(message.get("content") or "", item_status))
    for call in calls:
        function = call.get("function") or {}
        output.append(
            _call_item(call.get("id") or _id("call"), function.get("name", ""), function.get("arguments", ""))
        )
    response["usage"] = usage_of_chat(completion.get("usage"))
    return response


def event(kind: str, sequence: int, **fields: Any) -> bytes:
    """One Responses stream event: ``event: <type>`` and ``data: {..., "type", "sequence_number"}``
    (API reference, "Streaming events")."""
    data = {"type": kind, **fields, "sequence_number": sequence}
    return (
        f"event: {kind}\ndata: ".encode()
        + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


class EventWriter:
    """Turns chat completion chunks into Responses stream events, as they arrive.

    Events (API reference, "Streaming events"): ``response.created``, ``response.in_progress``;
    per output item ``response.output_item.added`` … ``response.output_item.done``; inside a
    reasoning item ``response.reasoning_summary_part.added``,
    ``response.reasoning_summary_text.delta``/``.done``, ``response.reasoning_summary_part.done``;
    inside a message ``response.content_part.added``, ``response.output_text.delta``/``.done``,
    ``response.content_part.done``; inside a function call
    ``response.function_call_arguments.delta``/``.done``; last ``response.completed``, or
    ``response.incomplete`` (finish reason ``length``), or ``response.failed`` when the chat
    stream was cut (never a normal end then).
    """

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.response = _envelope(body, _id("resp"), int(time.time()), model)
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # output items, in output order
        self.open: dict[int, dict[str, Any]] = {}  # output index → item still being written
        self.reasoning: int | None = None  # output index of the open reasoning item
        self.message: int | None = None  # output index of the open message
        self.calls: dict[int, int] = {}  # chat tool call index → output index
        self.finish_reason: Any = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        out = event(kind, self.sequence, **fields)
        self.sequence += 1
        return out

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=dict(self.response)),
            self._event("response.in_progress", response=dict(self.response)),
        ]

    def _add(self, item: dict[str, Any]) -> tuple[int, bytes]:
        index = len(self.items)
        self.items.append(item)
        self.open[index] = item
        return index, self._event("response.output_item.added", output_index=index, item=item)

    def _close(self, index: int | None, status: str = "completed") -> list[bytes]:
        if index is None or index not in self.open:
            return []
        item = self.open.pop(index)
        out: list[bytes] = []
        common = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            part = item["summary"][0]
            out.append(
                self._event("response.reasoning_summary_text.done", **common, summary_index=0, text=part["text"])
            )
            out.append(self._event("response.reasoning_summary_part.done", **common, summary_index=0, part=part))
        elif item["type"] == "message":
            part = item["content"][0]
            item["status"] = status
            out.append(
                self._event("response.output_text.done", **common, content_index=0, text=part["text"], logprobs=[])
            )
            out.append(self._event("response.content_part.done", **common, content_index=0, part=part))
        else:
            item["status"] = status
            out.append(
                self._event(
                    "response.function_call_arguments.done", **common, name=item["name"], arguments=item["arguments"]
                )
            )
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one chat completion chunk (possibly none)."""
        out: list[bytes] = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_of_chat(chunk["usage"])
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self.reasoning not in self.open:  # none yet, or closed by content
                    item = {"id": _id("rs"), "type": "reasoning", "summary": []}
                    self.reasoning, added = self._add(item)
                    part = {"type": "summary_text", "text": ""}
                    out.append(added)
                    out.append(
                        self._event(
                            "response.reasoning_summary_part.added",
                            item_id=item["id"],
                            output_index=self.reasoning,
                            summary_index=0,
                            part=dict(part),
                        )
                    )
                    item["summary"].append(part)
                item = self.items[self.reasoning]
                item["summary"][0]["text"] += reasoning
                out.append(
                    self._event(
                        "response.reasoning_summary_text.delta",
                        item_id=item["id"],
                        output_index=self.reasoning,
                        summary_index=0,
                        delta=reasoning,
                    )
                )
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._close(self.reasoning)
                if self.message not in self.open:  # none yet, or closed by a tool call
                    item = _message_item("", "in_progress")
                    part = item.pop("content")[0]
                    item["content"] = []
                    self.message, added = self._add(item)
                    out.append(added)
                    out.append(
                        self._event(
                            "response.content_part.added",
                            item_id=item["id"],
                            output_index=self.message,
                            content_index=0,
                            part=dict(part),
                        )
                    )
                    item["content"].append(part)
                item = self.items[self.message]
                item["content"][0]["text"] += content
                out.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=self.message,
                        content_index=0,
                        delta=content,
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                out += self._close(self.reasoning)
                out += self._close(self.message)
                function = call.get("function") or {}
                key = call.get("index", 0)
                if key not in self.calls:
                    item = _call_item(call.get("id") or _id("call"), function.get("name") or "", "", "in_progress")
                    self.calls[key], added = self._add(item)
                    out.append(added)
                item = self.items[self.calls[key]]
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    item["arguments"] += arguments
                    out.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=self.calls[key],
                            delta=arguments,
                        )
                    )
        return out

    def done(self) -> list[bytes]:
        """The chat stream ended with ``[DONE]``: close every item, then ``response.completed``
        (or ``response.incomplete`` when the model stopped at ``max_output_tokens``)."""
        out: list[bytes] = []
        out += self._close(self.reasoning)
        if self.message is None and not self.calls:
            item = _message_item("", "in_progress")
            self.message, added = self._add(item)
            out.append(added)
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.message,
                    content_index=0,
                    part=dict(item["content"][0]),
                )
            )
        _finish(self.response, self.finish_reason)
        status = "incomplete" if self.response["status"] == "incomplete" else "completed"
        for index in sorted(self.open):
            out += self._close(index, status)
        self.response["output"] = self.items
        self.response["usage"] = self.usage
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(self._event(kind, response=self.response))
        return out

    def failed(self, message: str) -> list[bytes]:
        """The chat stream was cut: ``response.failed``, its ``error`` code ``server_error`` (the
        ``ResponseError`` codes of the SDK) and the message saying ``upstream_stream_truncated``;
        the items so far are in ``output`` with status ``incomplete``. No ``response.completed``."""
        for item in self.open.values():
            if item["type"] != "reasoning":
                item["status"] = "incomplete"
        self.response.update(
            status="failed",
            output=self.items,
            usage=self.usage,
            error={"code": "server_error", "message": f"upstream_stream_truncated: {message}"},
        )
        return [self._event("response.failed", response=self.response)]


async def translate_stream(chunks: AsyncIterator[bytes], writer: EventWriter) -> AsyncIterator[bytes]:
    """Responses events from the SSE bytes of a chat stream (read by :class:`SSEDecoder`).

    ``: keep-alive`` comments are passed on while nothing else is (so CDN and client read
    timeouts do not fire while R1 thinks). A chat stream that ends with an error event
    (``upstream_stream_truncated``), or without ``[DONE]``, becomes ``response.failed``.
    """
    async with chat_events(chunks) as events:
        for out in writer.start():
            yield out
        async for event in events:
            if event.kind == "keep-alive":
                yield b": keep-alive\n\n"
            elif event.kind == "chunk":
                for out in writer.chunk(event.data or {}):
                    yield out
            elif event.kind == "done":
                for out in writer.done():
                    yield out
                return
            else:  # an error event, an unreadable event, or the end without [DONE]
                detail = {"ended": "the chat stream ended without data: [DONE]"}.get(
                    event.kind, "the chat stream sent an unreadable event"
                )
                for out in writer.failed(event.error_message(detail)):
                    yield out
                return


async def create_response(request: Request) -> Response:
    """``POST /v1/responses``: a ``response`` object, or its stream of events."""
    pipeline = pipeline_of(request)
    gateway = await pipeline.gateway(request)
    raw = await web.read_body(request, gateway.config.max_body_bytes)
    body = parse_json_body(raw, gateway.config.max_json_depth)
    chat = validate_chat_request(chat_body(body))
    routed = await pipeline.answer(request, chat)
    if isinstance(routed, Response):
        return routed
    if routed.stream is not None:
        writer = EventWriter(body, chat.model)
        return web.ClosingStreamingResponse(
            translate_stream(routed.stream, writer),
            media_type="text/event-stream",
            headers={**routed.headers(), **SSE_HEADERS},
        )
    return JSONResponse(response_of(routed.completion, body, chat.model), headers=routed.headers())


def routes() -> list[Route]:
    """``POST /v1/responses``."""
    return [Route("/v1/responses", create_response, methods=["POST"])]
