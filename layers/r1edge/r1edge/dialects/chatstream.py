"""Reading the pipeline's chat stream, once for every dialect.

The pipeline streams SSE bytes of chat completion chunks that end in ``data: [DONE]``, or in an
``upstream_stream_truncated`` error event, or simply stop (a cut). :func:`chat_events` decodes them
with the one SSE decoder and says which of those happened, so each dialect only maps events to
its own shapes; and it closes the chat stream — and so the upstream request — however the
dialect's own stream ends (finished, failed, or abandoned by a client that left).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from r1edge.protocol.sse import SSEDecoder

#: What happened in the chat stream: a ``chunk``; a ``keep-alive`` comment that came alone; the
#: ``done`` event; an ``error`` event (the stream ends there); an event that is not a JSON object
#: (``unreadable``); or the stream ``ended`` with neither ``[DONE]`` nor an error (truncated).
Kind = Literal["chunk", "keep-alive", "done", "error", "unreadable", "ended"]


@dataclass(frozen=True)
class ChatEvent:
    """One thing the chat stream said. ``data`` is the decoded object of a ``chunk`` or an
    ``error`` event (``{"error": {...}}``), ``None`` otherwise."""

    kind: Kind
    data: dict[str, Any] | None = None

    def error_message(self, default: str) -> str:
        """The ``error.message`` of an ``error`` event, else ``default``."""
        error = (self.data or {}).get("error")
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) and message else default


async def _events(chunks: AsyncIterator[bytes]) -> AsyncIterator[ChatEvent]:
    decoder = SSEDecoder()
    async for piece in chunks:
        payloads = decoder.feed(piece)
        if not payloads and piece.lstrip().startswith(b":"):
            yield ChatEvent("keep-alive")
        for payload in payloads:
            if payload.strip() == "[DONE]":
                yield ChatEvent("done")
                return
            try:
                obj = json.loads(payload)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                yield ChatEvent("unreadable")
            elif "error" in obj:
                yield ChatEvent("error", obj)
                return
            else:
                yield ChatEvent("chunk", obj)
    yield ChatEvent("ended")


@contextlib.asynccontextmanager
async def chat_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[ChatEvent]]:
    """The events of a chat stream, as an async context manager: leaving its block — a
    ``return`` after a failure, or the client going away, even before the first event was
    read — closes the chat stream (and so the upstream request) at once::

        async with chat_events(routed.stream) as events:
            async for event in events:
                ...
    """
    events = _events(chunks)
    try:
        yield events
    finally:
        await events.aclose()
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
