"""Streamed answers: holding the response until content, keep-alive, relaying, truncation.

The client's response is held until the upstream's first content chunk, so a failure before
content falls back silently (through the :class:`~r1edge.routing.attempts.RetryLoop`) and the
headers name the endpoint that answers. If no content comes within ``keepalive_interval``
seconds the response starts and ``: keep-alive`` comments flow until it does (a fallback may
still happen then, silently, before any content). Once content has reached the client, a
failure ends the stream with ``upstream_stream_truncated`` and no ``[DONE]`` (docs/ARCHITECTURE.md,
Errors). Closing the stream (client gone) closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aws_lambda_powertools import Logger

from r1edge.protocol.errors import OpenAIError
from r1edge.protocol.sse import (
    DONE,
    MAX_JSON_DEPTH,
    MAX_SSE_LINE_BYTES,
    StreamTruncated,
    iter_chunks,
    sse_data,
    truncated_event,
)
from r1edge.resilience.balancer import EndpointState
from r1edge.routing.attempts import Host, RetryLoop
from r1edge.routing.routed import Routed, header_confidence, relayed_headers

logger = Logger(service="r1edge-router", child=True)

#: The SSE comment sent while a stream waits for its first content.
KEEPALIVE = b": keep-alive\n\n"
#: Chunks read ahead of the client: the reader waits when this many are queued, so a client
#: slower than its upstream holds the upstream back (TCP flow control) instead of filling memory.
READ_AHEAD = 64
#: Chunks held before the first content (role-only or empty deltas); more is a failed attempt.
MAX_CHUNKS_BEFORE_CONTENT = 1024


class LowConfidence(Exception):
    """A streamed edge answer whose first tokens fell under the cascade threshold (closed).

    Attributes:
        confidence: the edge's ``x-r1edge-confidence``, in [0, 1].
    """

    def __init__(self, confidence: float) -> None:
        super().__init__(confidence)
        self.confidence = confidence


def has_finish_reason(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries a ``finish_reason`` (every complete OpenAI stream has one)."""
    choices = chunk.get("choices")
    return any(isinstance(c, dict) and c.get("finish_reason") for c in (choices if isinstance(choices, list) else []))


def has_content(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries something the client should see as an answer: content,
    reasoning, tool calls, a finish reason, or usage (a role-only first delta does not count)."""
    if chunk.get("usage"):
        return True
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


class UpstreamStream:
    """An upstream SSE response read by a background task into a queue, so waits can time out
    without breaking the stream (cancelling an ``__anext__`` mid-read would). The queue holds at
    most :data:`READ_AHEAD` chunks, and at most :data:`MAX_CHUNKS_BEFORE_CONTENT` are held before
    the first content: the memory a stream takes is bounded whatever the upstream sends.

    Args:
        response: a 200 ``text/event-stream`` response opened in streaming mode.
        max_depth: most levels of nesting of one event's JSON (the config's ``max_json_depth``).
        max_line_bytes: longest SSE line or event data read, bytes (the endpoint's
            ``max_sse_line_bytes``).
    """

    def __init__(
        self, response: httpx.Response, max_depth: int = MAX_JSON_DEPTH, max_line_bytes: int = MAX_SSE_LINE_BYTES
    ) -> None:
        self.response = response
        self.max_depth = max_depth
        self.max_line_bytes = max_line_bytes
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=READ_AHEAD)
        self.buffered: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for chunk in iter_chunks(self.response, self.max_depth, self.max_line_bytes):
                await self.queue.put(("chunk", chunk))
            await self.queue.put(("done", None))
        except StreamTruncated as exc:
            await self.queue.put(("error", str(exc)))
        except Exception as exc:  # noqa: BLE001 - whatever breaks the reader must end the wait, not hang it
            await self.queue.put(("error", f"{type(exc).__name__}: {exc}"))

    async def get(self, timeout: float) -> tuple[str, Any]:
        """Next item: ``("chunk", obj)``, ``("done", None)``, ``("error", reason)``, or
        ``("timeout", None)`` after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=max(0.0, timeout))
        except TimeoutError:
            return ("timeout", None)

    async def first_content(self, timeout: float, loop: RetryLoop) -> str:
        """Buffer chunks until one carries content: ``"content"``; ``"waiting"`` when
        ``timeout`` seconds pass first (the first-byte budget is not spent yet); ``"failed"`` when
        the stream failed or ended before content, or the first-byte budget ran out (recorded
        on ``loop``)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            kind, item = await self.get(left)
            if kind == "chunk":
                self.buffered.append(item)
                if has_content(item):
                    return "content"
                if len(self.buffered) <= MAX_CHUNKS_BEFORE_CONTENT:
                    continue
                kind, item = "error", f"more than {MAX_CHUNKS_BEFORE_CONTENT} chunks without content"
            state = loop.current
            if kind == "timeout":
                if loop.first_byte_left(state) > 0:
                    return "waiting"
                loop.failed(state, f"no first token within {state.endpoint.timeouts.first_byte:g} s", timeout=True)
                return "failed"
            reason = item if kind == "error" else "stream ended before any content"
            loop.failed(state, reason)
            return "failed"

    async def aclose(self) -> None:
        """Close the upstream connection, then end the reader. The order matters: cancelling a
        read in flight can leave httpcore's socket open (its cleanup is itself cancelled), and an
        open socket keeps the upstream generating."""
        await self.response.aclose()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _upstream_stream(host: Host, state: EndpointState, response: httpx.Response) -> UpstreamStream:
    """Read ``response`` within the config's depth limit and the endpoint's line limit."""
    return UpstreamStream(response, host.config.max_json_depth, state.endpoint.max_sse_line_bytes)


async def open_stream(host: Host, loop: RetryLoop) -> Routed:
    """Open a stream and hold the client's response until the first content chunk, so that a
    failure before any content falls back silently with accurate headers; if no content
    comes within ``keepalive_interval`` seconds, commit the response and keep waiting inside
    it, sending ``: keep-alive`` comments (see :func:`relay`).

    A probe slot the loop holds goes with the held stream to :func:`relay` (which gives it
    back when it ends); it is given back here when this ends any other way.

    Raises:
        LowConfidence: ``loop.min_confidence`` is set and the edge's confidence is under it.
        OpenAIError: as :meth:`RetryLoop.next_response <r1edge.routing.attempts.RetryLoop.next_response>`.
    """
    try:
        while True:
            state, response = await loop.next_response()
            confidence = header_confidence(response.headers)
            if loop.min_confidence is not None and confidence is not None and confidence < loop.min_confidence:
                await response.aclose()
                state.in_flight -= 1
                loop.succeeded(state)
                raise LowConfidence(confidence)
            upstream = _upstream_stream(host, state, response)
            wait = min(host.config.keepalive_interval, loop.first_byte_left(state))
            result = await upstream.first_content(wait, loop)
            if result == "failed":
                await upstream.aclose()
                state.in_flight -= 1
                continue
            if result == "content":
                loop.succeeded(state)
            return Routed(
                loop.decision,
                state.endpoint,
                loop.total_attempts,
                stream=relay(host, loop, state, upstream, content_started=result == "content"),
                upstream_headers=relayed_headers(response.headers),
            )
    except BaseException:
        loop.release_probe()
        raise


def _count_usage(host: Host, loop: RetryLoop, state: EndpointState, chunk: dict[str, Any]) -> None:
    """Token counts from a stream's usage chunk (``stream_options.include_usage``)."""
    if chunk.get("usage"):
        host.metrics.usage(loop.decision.tier, state.endpoint.name, chunk["usage"])


async def relay(
    host: Host, loop: RetryLoop, state: EndpointState, upstream: UpstreamStream, content_started: bool
) -> AsyncIterator[bytes]:
    """The client's SSE stream. Before content: keep-alive comments, and silent fallback to
    the next endpoint on failure. After content: chunks as they arrive; a failure ends the
    stream with ``upstream_stream_truncated`` and no ``[DONE]`` (docs/ARCHITECTURE.md, Errors).
    A probe slot the loop still holds (no content yet) is given back when the stream ends,
    however it ends; one never iterated at all is freed by the probe's lease."""
    current: UpstreamStream | None = upstream
    try:
        while not content_started:
            left = loop.first_byte_left(state)
            result = await upstream.first_content(min(host.config.keepalive_interval, left), loop)
            if result == "content":
                loop.succeeded(state)
                content_started = True
            elif result == "waiting":
                yield KEEPALIVE
            else:  # failed before any content: fall back silently, inside the same response
                current = None
                await upstream.aclose()
                state.in_flight -= 1
                try:
                    state, response = await loop.next_response()
                except OpenAIError as exc:  # keep-alive bytes were sent: a truncated stream
                    yield truncated_event(f"{exc.code}: {exc.message}")
                    return
                upstream = current = _upstream_stream(host, state, response)
        finished = any(has_finish_reason(c) for c in upstream.buffered)
        for chunk in upstream.buffered:
            _count_usage(host, loop, state, chunk)
            yield sse_data(chunk)
        upstream.buffered.clear()
        idle = state.endpoint.timeouts.idle
        while True:
            left = loop.deadline_at - host.clock()
            kind, item = await upstream.get(min(idle, left))
            if kind == "chunk":
                finished = finished or has_finish_reason(item)
                _count_usage(host, loop, state, item)
                yield sse_data(item)
            elif kind == "done" and finished:
                yield DONE
                return
            else:
                if kind == "done":
                    reason = "upstream ended the stream before any finish_reason (an interrupted answer)"
                elif kind == "error":
                    reason = item
                elif left <= idle:
                    reason = "the request's deadline passed"
                else:
                    reason = f"no data for {idle:g} s"
                state.breaker.record(host.clock(), True, None)  # content came: no probe held
                logger.warning("stream cut after content", extra={"endpoint": state.endpoint.name, "reason": reason})
                yield truncated_event(reason)
                return
    finally:
        loop.release_probe()
        if current is not None:
            await current.aclose()
            state.in_flight -= 1
