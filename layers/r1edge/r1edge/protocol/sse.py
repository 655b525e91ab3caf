"""Relaying OpenAI chat completion answers: SSE streams and JSON bodies.

SSE is parsed by :class:`SSEDecoder`, the one SSE parser of r1edge (WHATWG HTML "Server-sent
events" parsing: comment lines such as ``: keep-alive`` are dropped by the parser and never reach
``json.loads``; text is decoded a whole line at a time, so a multi-byte UTF-8 character split
across two network reads arrives whole). Upstream, each ``data:`` event is normalised and
re-emitted at once by :func:`iter_chunks` — nothing is buffered whole.

Normalisation (docs/ARCHITECTURE.md, Contracts): vLLM >= 0.11 names the reasoning text ``reasoning``;
DeepSeek's API and r1edge call it ``reasoning_content``. We rename, and when both arrive we keep
``reasoning_content`` and drop ``reasoning`` — never both, never concatenated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from r1edge.headers import CACHE_CONTROL, CONTENT_TYPE, X_ACCEL_BUFFERING
from r1edge.protocol.errors import error_body

DONE = b"data: [DONE]\n\n"
#: Headers every SSE answer carries so proxies (nginx, CloudFront) neither buffer nor cache it.
SSE_HEADERS = {CACHE_CONTROL: "no-cache", X_ACCEL_BUFFERING: "no"}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON, and rejected by strict
    clients), so such an upstream answer is a failure, never relayed."""
    return json.loads(text, parse_constant=_no_constants)


class StreamTruncated(Exception):
    """The upstream stream ended or failed before ``data: [DONE]``."""


class SSEDecoder:
    """Incremental Server-Sent Events decoder: bytes in (any split), the ``data`` of each complete
    event out, as text. The one SSE parser of r1edge: upstream streams, cached streams, metering
    and metrics all read SSE through it.

    Parsing follows WHATWG HTML, "Server-sent events", "Event stream interpretation": lines end
    in CRLF, LF or CR (a CRLF cut between two reads is still one line end); a line starting with
    ``:`` is a comment (``: keep-alive``) and is dropped; a field without a colon is a field name
    with an empty value; one space after the colon is removed, no more; the ``data`` fields of one
    event are joined with ``\\n``; a blank line dispatches the event; an event with no ``data``
    field is not dispatched (one with an empty ``data:`` is, as ``""``); other fields (``event``,
    ``id``, ``retry``) are ignored, as OpenAI-style streams carry everything in ``data``; an
    unfinished event when the input ends is never dispatched. Text is decoded as UTF-8 (the only
    encoding of the format) once a whole line has arrived, so a character split across two reads
    arrives whole; invalid bytes become U+FFFD, as the spec's decoder does. A leading byte order
    mark is not stripped (neither did httpx-sse, r1edge's parser before this one).
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # the start of a line whose end has not arrived
        self._data: list[str] = []  # the data fields of the event being read
        self._cr = False  # the last read ended in CR: an LF starting the next belongs to it

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes (any amount, cut anywhere); return the ``data`` of every event completed by
        them, in order (possibly none)."""
        if self._cr and chunk:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending += chunk  # no line ends: nothing to parse yet
            return []
        self._cr = chunk.endswith(b"\r")
        lines = (bytes(self._pending) + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = bytearray(lines.pop())
        out: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
            elif not line.startswith(b":"):
                name, _, value = line.partition(b":")
                if name == b"data":
                    self._data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held back, waiting for its end."""
        return len(self._pending)


def parse_events(data: bytes) -> list[dict[str, Any] | str]:
    """The ``data`` payloads of SSE bytes made of whole events (parsed by :class:`SSEDecoder`):
    decoded JSON objects, or the raw string (``"[DONE]"``, or anything that is not a JSON
    object). A last event whose line or blank line is missing is taken too (the bytes are all
    there is: a stored stream, a finished response)."""
    decoder = SSEDecoder()
    events: list[dict[str, Any] | str] = []
    for payload in decoder.feed(data) + decoder.feed(b"\n\n"):
        try:
            obj = json.loads(payload)
        except ValueError:
            events.append(payload)
            continue
        events.append(obj if isinstance(obj, dict) else payload)
    return events


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


#: The media type an upstream stream must declare (``Content-Type`` before any ``;``, containing it).
EVENT_STREAM = "text/event-stream"


def _not_an_event_stream(response: httpx.Response) -> str | None:
    """Why ``response`` cannot be read as SSE, or ``None``. The rule (a substring of the media
    type, case as sent) and the wording are httpx-sse's ``EventSource``, which read upstream
    streams before :class:`SSEDecoder`; the class name stays in the message so it reads as it did."""
    content_type = response.headers.get(CONTENT_TYPE, "").partition(";")[0]
    if EVENT_STREAM in content_type:
        return None
    return f"SSEError: Expected response header Content-Type to contain {EVENT_STREAM!r}, got {content_type!r}"


async def iter_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Yield normalised chunk objects from an upstream SSE response until ``data: [DONE]``.

    The body is read with ``response.aiter_bytes()`` (content-encoding undone, chunks as they
    arrive) and parsed by :class:`SSEDecoder`; events with empty data are skipped. After
    ``[DONE]`` the rest of the body is read for at most :data:`DRAIN_SECONDS` and ignored.

    Raises:
        StreamTruncated: the response is not ``text/event-stream``, the stream ended without
            ``[DONE]``, the connection failed (also while draining after ``[DONE]``), an event
            was not a JSON object, or the upstream sent an ``error`` object mid-stream.
    """
    refused = _not_an_event_stream(response)
    if refused is not None:
        raise StreamTruncated(f"upstream stream failed: {refused}")
    decoder = SSEDecoder()
    reads = response.aiter_bytes()
    try:
        async for read in reads:
            for data in decoder.feed(read):
                if not data:
                    continue
                if data.strip() == "[DONE]":
                    # Read the body to its end (normally just the last chunk marker), so httpx can
                    # put the connection back in the pool; a server that holds the body open after
                    # [DONE] gets DRAIN_SECONDS, then its connection is closed instead.
                    with anyio.move_on_after(DRAIN_SECONDS):
                        async for _ in reads:
                            pass
                    return
                try:
                    obj = strict_loads(data)
                except ValueError:
                    raise StreamTruncated(f"upstream sent an event that is not JSON: {data[:80]!r}") from None
                if not isinstance(obj, dict):
                    raise StreamTruncated("upstream sent an event that is not a JSON object")
                if "error" in obj:
                    error = obj["error"]
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise StreamTruncated(f"upstream reported an error mid-stream: {detail}")
                yield normalize_completion(obj)
    except httpx.HTTPError as exc:
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
