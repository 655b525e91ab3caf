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


#: Most levels of nested arrays and objects r1edge accepts in any JSON it reads (a request body,
#: an upstream answer, an SSE event), unless the routing config's ``max_json_depth`` says
#: otherwise. The top-level object is level 1; a chat request nests 3 levels, a completion with
#: ``logprobs`` 9. Deeper values would reach recursive code (``json.dumps``, ``copy.deepcopy``,
#: the cache key's normalisation) and could exhaust the interpreter's recursion limit.
MAX_JSON_DEPTH = 64


class JSONTooDeep(ValueError):
    """A JSON text nests more than the allowed levels of arrays and objects.

    Attributes:
        limit: the limit it exceeded (levels).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested more than {limit} levels deep (the limit, max_json_depth)")
        self.limit = limit


def json_depth(value: Any, stop_after: int | None = None) -> int:
    """Levels of nested arrays and objects in a decoded JSON value (``0`` for a scalar, ``1`` for
    ``[]`` or ``{"a": 1}``), counted level by level without recursion, so any depth is safe.

    Args:
        value: a decoded JSON value (dicts, lists, scalars).
        stop_after: stop counting once the depth is known to exceed this (returns
            ``stop_after + 1``): the cost of refusing a deep value stays bounded.

    Returns:
        The depth, in levels.
    """
    depth = 0
    level = [value]
    while True:
        children: list[Any] = []
        containers = 0
        for item in level:
            if isinstance(item, dict):
                containers += 1
                children.extend(item.values())
            elif isinstance(item, list):
                containers += 1
                children.extend(item)
        if not containers:
            return depth
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        level = children


def strict_loads(text: str | bytes, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON, and rejected by strict
    clients), so such an upstream answer is a failure, never relayed; and refuses values nested
    more than ``max_depth`` levels (``None``: no limit).

    The depth is checked on the decoded value by :func:`json_depth` (iterative) before anything
    else touches it. Measured on 1 MiB bodies, this costs less than a scan of the bytes counting
    brackets outside strings: under 1 ms for a chat body with one long message or 1000 messages
    (the byte scan: 9 to 16 ms), about as much as ``json.loads`` itself (~45 ms) for 1 MiB of
    tiny arrays (the byte scan: 13 ms). ``json.loads`` itself is recursive in C but guarded: past
    the interpreter's recursion limit it raises ``RecursionError``, which is reported as
    :class:`JSONTooDeep` too.

    Raises:
        JSONTooDeep: nested more than ``max_depth`` levels (a ``ValueError``).
        ValueError: not JSON text (``json.JSONDecodeError``, ``UnicodeDecodeError``), or
            ``NaN``/``Infinity``.
    """
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise JSONTooDeep(MAX_JSON_DEPTH if max_depth is None else max_depth) from None
    if max_depth is not None and json_depth(value, stop_after=max_depth) > max_depth:
        raise JSONTooDeep(max_depth)
    return value


class StreamTruncated(Exception):
    """The upstream stream ended or failed before ``data: [DONE]``."""


#: Longest SSE line, and longest ``data`` of one event, read from an upstream (bytes), unless the
#: endpoint's ``max_sse_line_bytes`` says otherwise: 1 MiB, hundreds of times a chat chunk.
MAX_SSE_LINE_BYTES = 1024 * 1024


class SSETooLong(ValueError):
    """An SSE line (or the ``data`` of one event) grew past the decoder's limit.

    Attributes:
        limit: the limit, bytes.
    """

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} longer than {limit} bytes (the limit, max_sse_line_bytes)")
        self.limit = limit


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

    Args:
        max_line_bytes: the longest line, and the longest ``data`` of one event (its data fields
            together, bytes), held; ``None`` (the default) sets no bound. Upstream streams are
            read with one (:data:`MAX_SSE_LINE_BYTES` or the endpoint's ``max_sse_line_bytes``),
            so a line that never ends cannot fill the router's memory.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._pending = bytearray()  # the start of a line whose end has not arrived
        self._data: list[str] = []  # the data fields of the event being read
        self._data_bytes = 0  # bytes of those fields
        self._cr = False  # the last read ended in CR: an LF starting the next belongs to it
        self.max_line_bytes = max_line_bytes

    def _too_long(self, size: int) -> bool:
        return self.max_line_bytes is not None and size > self.max_line_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes (any amount, cut anywhere); return the ``data`` of every event completed by
        them, in order (possibly none).

        Raises:
            SSETooLong: a line, or the data of one event, is longer than ``max_line_bytes``
                (the bytes held are not grown past the limit plus this read).
        """
        if self._cr and chunk:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending += chunk  # no line ends: nothing to parse yet
            if self._too_long(len(self._pending)):
                raise SSETooLong("an SSE line", self.max_line_bytes or 0)
            return []
        self._cr = chunk.endswith(b"\r")
        lines = (bytes(self._pending) + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = bytearray(lines.pop())
        if self._too_long(len(self._pending)) or any(self._too_long(len(line)) for line in lines):
            raise SSETooLong("an SSE line", self.max_line_bytes or 0)
        out: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
                    self._data_bytes = 0
            elif not line.startswith(b":"):
                name, _, value = line.partition(b":")
                if name == b"data":
                    value = value[1:] if value.startswith(b" ") else value
                    self._data_bytes += len(value) + 1
                    if self._too_long(self._data_bytes - 1):
                        raise SSETooLong("the data of one SSE event", self.max_line_bytes or 0)
                    self._data.append(value.decode("utf-8", "replace"))
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


async def iter_chunks(
    response: httpx.Response, max_depth: int = MAX_JSON_DEPTH, max_line_bytes: int = MAX_SSE_LINE_BYTES
) -> AsyncIterator[dict[str, Any]]:
    """Yield normalised chunk objects from an upstream SSE response until ``data: [DONE]``.

    The body is read with ``response.aiter_bytes()`` (content-encoding undone, chunks as they
    arrive) and parsed by :class:`SSEDecoder`; events with empty data are skipped. After
    ``[DONE]`` the rest of the body is read for at most :data:`DRAIN_SECONDS` and ignored.

    Args:
        response: a streamed upstream response.
        max_depth: most levels of nesting of one event's JSON (:data:`MAX_JSON_DEPTH`).
        max_line_bytes: longest line and longest event data, bytes (:data:`MAX_SSE_LINE_BYTES`);
            nothing past it is read.

    Raises:
        StreamTruncated: the response is not ``text/event-stream``, the stream ended without
            ``[DONE]``, the connection failed (also while draining after ``[DONE]``), an event
            was not a JSON object or nested deeper than ``max_depth``, a line or an event was
            longer than ``max_line_bytes``, or the upstream sent an ``error`` object mid-stream.
    """
    refused = _not_an_event_stream(response)
    if refused is not None:
        raise StreamTruncated(f"upstream stream failed: {refused}")
    decoder = SSEDecoder(max_line_bytes)
    reads = response.aiter_bytes()
    try:
        async for read in reads:
            try:
                events = decoder.feed(read)
            except SSETooLong as exc:
                raise StreamTruncated(f"upstream sent {exc}") from None
            for data in events:
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
                    obj = strict_loads(data, max_depth)
                except JSONTooDeep as exc:
                    raise StreamTruncated(f"upstream sent an event of {exc}") from None
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


def parse_completion(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Decode and normalise a non-streamed chat completion body.

    Args:
        raw: the body, bytes.
        max_depth: most levels of nesting accepted (:data:`MAX_JSON_DEPTH` by default).

    Raises:
        JSONTooDeep: the body nests more than ``max_depth`` levels (a ``ValueError``).
        ValueError: the body is not a JSON object with a ``choices`` list (a cut or broken
            body is never passed on as a 200).
    """
    obj = strict_loads(raw, max_depth)
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise ValueError("upstream body is not a chat completion object")
    return normalize_completion(obj)
