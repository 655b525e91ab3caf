"""Relaying OpenAI chat completion answers: SSE streams and JSON bodies.

Upstream SSE is parsed with ``httpx-sse`` (WHATWG HTML "Server-sent events" parsing: comment
lines such as ``: keep-alive`` are dropped by the parser and never reach ``json.loads``; text is
decoded incrementally, so a multi-byte UTF-8 character split across two network reads arrives
whole). Each ``data:`` event is normalised and re-emitted at once — nothing is buffered whole.

Normalisation (DESIGN.md, Contracts): vLLM >= 0.11 names the reasoning text ``reasoning``;
DeepSeek's API and r1edge call it ``reasoning_content``. We rename, and when both arrive we keep
``reasoning_content`` and drop ``reasoning`` — never both, never concatenated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from httpx_sse import EventSource, SSEError

from r1edge.errors import error_body

DONE = b"data: [DONE]\n\n"
#: Headers every SSE answer carries so proxies (nginx, CloudFront) neither buffer nor cache it.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON, and rejected by strict
    clients), so such an upstream answer is a failure, never relayed."""
    return json.loads(text, parse_constant=_no_constants)


class StreamTruncated(Exception):
    """The upstream stream ended or failed before ``data: [DONE]``."""


def normalize_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """Rename ``reasoning`` to ``reasoning_content`` in a message or delta (in place, returned).

    If both are present, ``reasoning_content`` wins and ``reasoning`` is removed.
    """
    if "reasoning" in message:
        reasoning = message.pop("reasoning")
        if message.get("reasoning_content") is None and reasoning is not None:
            message["reasoning_content"] = reasoning
    return message


def normalize_completion(obj: dict[str, Any]) -> dict[str, Any]:
    """Normalise a chat completion or chunk object: each choice's ``message``/``delta``."""
    choices = obj.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict):
            for key in ("message", "delta"):
                if isinstance(choice.get(key), dict):
                    normalize_reasoning(choice[key])
    return obj


def sse_data(obj: dict[str, Any]) -> bytes:
    """Encode one object as an SSE ``data:`` event (UTF-8, compact JSON, blank-line terminated)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def truncated_event(message: str) -> bytes:
    """The SSE error event that ends a stream cut after bytes reached the client (no ``[DONE]``)."""
    return sse_data(error_body(message, "server_error", None, "upstream_stream_truncated"))


#: Seconds to wait for an upstream body to end after ``data: [DONE]``.
DRAIN_SECONDS = 0.5


async def iter_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Yield normalised chunk objects from an upstream SSE response until ``data: [DONE]``.

    Raises:
        StreamTruncated: the stream ended without ``[DONE]``, the connection failed, an event
            was not a JSON object, or the upstream sent an ``error`` object mid-stream.
    """
    events = EventSource(response).aiter_sse()
    try:
        async for event in events:
            if not event.data:
                continue
            if event.data.strip() == "[DONE]":
                # Read the body to its end (normally just the last chunk marker), so httpx can
                # put the connection back in the pool; a server that holds the body open after
                # [DONE] gets DRAIN_SECONDS, then its connection is closed instead.
                with anyio.move_on_after(DRAIN_SECONDS):
                    async for _ in events:
                        pass
                return
            try:
                obj = strict_loads(event.data)
            except ValueError:
                raise StreamTruncated(f"upstream sent an event that is not JSON: {event.data[:80]!r}") from None
            if not isinstance(obj, dict):
                raise StreamTruncated("upstream sent an event that is not a JSON object")
            if "error" in obj:
                error = obj["error"]
                detail = error.get("message") if isinstance(error, dict) else error
                raise StreamTruncated(f"upstream reported an error mid-stream: {detail}")
            yield normalize_completion(obj)
    except (httpx.HTTPError, SSEError) as exc:
        raise StreamTruncated(f"upstream stream failed: {type(exc).__name__}: {exc}") from None
    raise StreamTruncated("upstream stream ended without data: [DONE]")


def parse_completion(raw: bytes) -> dict[str, Any]:
    """Decode and normalise a non-streamed chat completion body.

    Raises:
        ValueError: the body is not a JSON object with a ``choices`` list (a cut or broken
            body is never passed on as a 200).
    """
    obj = strict_loads(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise ValueError("upstream body is not a chat completion object")
    return normalize_completion(obj)
