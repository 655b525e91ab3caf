"""Metering an answer as it goes out: its status, its route, and the usage and text of a JSON
completion or an SSE stream, read without holding any byte back.

SSE is read through :class:`r1edge.protocol.sse.SSEDecoder`, the one SSE parser (events may split
across body messages anywhere); JSON answers are kept up to :data:`MAX_METERED_JSON` bytes and
read once they have ended.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message

from r1edge.access.usage import Usage, usage_of
from r1edge.headers import CONTENT_TYPE, X_R1EDGE_ROUTE
from r1edge.protocol.sse import SSEDecoder

#: Most bytes of a JSON answer kept to read its ``usage`` (larger answers are estimated).
MAX_METERED_JSON = 4 * 1024 * 1024
#: Most characters of a streamed answer's text kept (for the content log); every character is
#: still counted for the usage estimate, so an endless stream holds no more than this.
MAX_METERED_TEXT = 1024 * 1024


class Meter:
    """Reads an answer as it goes out: its status, route (``x-r1edge-route``), and the usage and
    text of a JSON completion or an SSE stream (events may split across body messages)."""

    def __init__(self) -> None:
        self.status = 0
        self.route: str | None = None
        self.stream = False
        self.json = bytearray()
        self.sse = SSEDecoder()
        self.usage: Usage | None = None
        self.parts: list[str] = []
        self.chars = 0  # characters of text seen, kept or not

    def start(self, message: Message) -> None:
        """Take the ``http.response.start`` message: status, route, and whether it is SSE."""
        self.status = message["status"]
        headers = Headers(raw=message.get("headers", []))
        self.route = headers.get(X_R1EDGE_ROUTE)
        self.stream = headers.get(CONTENT_TYPE, "").startswith("text/event-stream")

    def feed(self, body: bytes) -> None:
        """Take the bytes of one ``http.response.body`` message."""
        if not self.stream:
            if len(self.json) + len(body) <= MAX_METERED_JSON:
                self.json.extend(body)
            return
        for data in self.sse.feed(body):
            if data == "[DONE]":
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            self.usage = usage_of(chunk) or self.usage
            self._texts(chunk, "delta")

    def _texts(self, obj: Any, field: str) -> None:
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            part = choice.get(field) if isinstance(choice, dict) else None
            # a text completion's choice carries its text itself (OpenAI API reference, Completions)
            texts = [choice.get("text")] if isinstance(choice, dict) else []
            if isinstance(part, dict):
                texts += [part.get("content"), part.get("reasoning_content")]
            for text in texts:
                if isinstance(text, str):
                    room = MAX_METERED_TEXT - self.chars
                    if room > 0:
                        self.parts.append(text[:room])
                    self.chars += len(text)

    def answered(self) -> bool:
        """Whether an upstream (or the cache) answered: status 200 with an ``x-r1edge-route``."""
        return self.status == 200 and self.route is not None

    def result(self, prompt_estimate: int, chars_per_token: float) -> tuple[Usage, str]:
        """The answer's usage (its own, else estimated: ``prompt_estimate`` tokens and the
        text's characters / ``chars_per_token``, rounded up) and its text (at most
        :data:`MAX_METERED_TEXT` characters of it)."""
        if not self.stream and self.json:
            try:
                completion = json.loads(bytes(self.json))
            except ValueError:
                completion = None
            self.usage = usage_of(completion)
            self._texts(completion, "message")
        text = "".join(self.parts)
        return self.usage or Usage(prompt_estimate, math.ceil(self.chars / chars_per_token)), text
