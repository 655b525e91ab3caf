"""A fault-injecting OpenAI-compatible upstream on a real loopback socket.

Each call to ``POST /v1/chat/completions`` takes the next :class:`Fault` from the script (the
last one repeats): answer a status with headers (e.g. ``Retry-After``), delay the headers, delay
the first chunk, send ``: keep-alive`` comments, send reasoning and usage chunks, send an SSE
error before any content, or cut the stream after N chunks; or answer without bound: a huge JSON
body made as it is sent, an SSE line that never ends (before or after content), a stream of
content that never ends. It records every call and whether the router closed the connection
before the answer was complete.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from run import free_port  # infra/local/run.py
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from r1edge.protocol.web import ClosingStreamingResponse


@dataclass
class Fault:
    """What one call does. Times in seconds."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # body of a non-200 answer
    delay_headers: float = 0.0
    delay_first_chunk: float = 0.0
    keepalives: int = 0  # ": keep-alive" comments before the first chunk
    chunks: int = 3  # content chunks
    cut_after: int | None = None  # drop the connection after this many content chunks
    chunk_delay: float = 0.0  # pause between content chunks
    reasoning: int = 0  # reasoning chunks (vLLM's "reasoning" field) before the content
    usage: bool = True  # a usage chunk at the end (streams) / usage object (JSON)
    error_before_content: bool = False  # role chunk, then an SSE error object
    body: bytes | None = None  # a raw JSON body instead of a completion (e.g. truncated)
    reset: bool = False  # send 200 headers, then drop the connection (a reset mid-answer)
    huge_json: int = 0  # bytes of a JSON body (no Content-Length) made as it is sent
    endless_line: bool = False  # after the role chunk and `chunks` content chunks, "data: zzz…" forever
    endless: bool = False  # content chunks of `piece` bytes each, forever (no finish_reason)
    piece: int = 64 * 1024  # bytes of each write of the unbounded faults


async def _gone(request: Request) -> bool:
    """Whether the router hung up. Unbounded answers ask before each write: once the client is
    gone, uvicorn's ``send`` returns at once without sending, and a loop would spin forever."""
    return await request.is_disconnected()


async def _huge_json(size: int, piece: int, call: Call, request: Request) -> AsyncIterator[bytes]:
    """``{"choices": ["xxx…"]}`` of ``size`` bytes, ``piece`` bytes at a time."""
    head, tail = b'{"choices": ["', b'"]}'
    sent = len(head) + len(tail)
    complete = False
    try:
        yield head
        block = b"x" * piece
        while sent + piece <= size:
            if await _gone(request):
                return
            yield block
            sent += piece
        yield b"x" * (size - sent) + tail
        complete = True
    finally:
        if not complete:
            call.hang_up()


@dataclass
class Call:
    body: dict[str, Any]
    headers: dict[str, str]
    closed_early: bool = False  # the router hung up before the answer was complete
    hung_up: threading.Event = field(default_factory=threading.Event, repr=False)  # set with closed_early

    def hang_up(self) -> None:
        """Record that the router closed the connection before the answer was complete."""
        self.closed_early = True
        self.hung_up.set()


async def _reset() -> AsyncIterator[bytes]:
    yield b'{"id": "f1", "choices": ['
    raise ConnectionResetError("fault: connection reset")


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {
        "id": "f1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fault",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(obj)}\n\n".encode()


class FaultServer:
    """Serve the script on ``127.0.0.1:<free port>`` in a thread; use as a context manager."""

    def __init__(
        self,
        name: str,
        script: list[Fault] | None = None,
        chooser: Callable[[], Fault] | None = None,
        log_level: str = "error",
    ) -> None:
        self.name = name
        self.script = list(script or [Fault()])
        self.chooser = chooser  # when given, picks each call's fault instead of the script
        self.calls: list[Call] = []
        self.metrics_text = ""  # served at /metrics (Prometheus text), e.g. vLLM's load gauges
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def endpoint(self, **extra: Any) -> dict[str, Any]:
        """This server as a routing-config endpoint (tier cluster unless given)."""
        return {"name": self.name, "url": self.url, "tier": "cluster", **extra}

    def __enter__(self) -> FaultServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def _next(self) -> Fault:
        if self.chooser is not None:
            return self.chooser()
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics_text, media_type="text/plain; version=0.0.4")

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fault", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        call = Call(body, dict(request.headers))
        self.calls.append(call)
        fault = self._next()
        waited = 0.0
        while waited < fault.delay_headers:  # notice a router that hangs up while we stall
            await asyncio.sleep(0.05)
            waited += 0.05
            if await request.is_disconnected():
                call.hang_up()
                return Response(status_code=499)
        if fault.reset:
            return ClosingStreamingResponse(_reset(), media_type="application/json")
        if fault.status != 200:
            error = fault.error or {"error": {"message": f"fault {fault.status}", "type": "server_error"}}
            return JSONResponse(error, status_code=fault.status, headers=fault.headers)
        if not body.get("stream"):
            if fault.huge_json:
                return ClosingStreamingResponse(
                    _huge_json(fault.huge_json, fault.piece, call, request), media_type="application/json"
                )
            if fault.body is not None:
                return Response(fault.body, media_type="application/json", headers=fault.headers)
            message = {"role": "assistant", "content": "".join(f"c{i} " for i in range(fault.chunks))}
            if fault.reasoning:
                message["reasoning"] = "think " * fault.reasoning
            result = {
                "id": "f1",
                "object": "chat.completion",
                "created": 1,
                "model": "fault",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
            if fault.usage:
                result["usage"] = {
                    "prompt_tokens": 3,
                    "completion_tokens": fault.chunks,
                    "total_tokens": 3 + fault.chunks,
                }
            return JSONResponse(result, headers=fault.headers)
        # Closed on disconnect (not left to the garbage collector), so ``closed_early`` is prompt.
        return ClosingStreamingResponse(
            self._stream(fault, call, request), media_type="text/event-stream", headers=fault.headers
        )

    async def _stream(self, fault: Fault, call: Call, request: Request) -> AsyncIterator[bytes]:
        complete = False
        try:
            for _ in range(fault.keepalives):
                yield b": keep-alive\n\n"
                await asyncio.sleep(0.05)
            if fault.delay_first_chunk:
                await asyncio.sleep(fault.delay_first_chunk)
            yield _chunk({"role": "assistant"})
            if fault.endless_line:
                for i in range(fault.chunks):
                    yield _chunk({"content": f"c{i} "})
                yield b"data: "
                block = b"z" * fault.piece
                while not await _gone(request):  # the router must hang up
                    yield block
                return
            if fault.endless:
                text = "e" * fault.piece
                while not await _gone(request):  # the router (or its client) must hang up
                    yield _chunk({"content": text})
                return
            if fault.error_before_content:
                yield b'data: {"error": {"message": "engine overloaded", "type": "server_error"}}\n\n'
                complete = True
                return
            for i in range(fault.reasoning):
                yield _chunk({"reasoning": f"r{i} "})
            for i in range(fault.chunks):
                if fault.cut_after is not None and i >= fault.cut_after:
                    raise ConnectionResetError("fault: connection cut")
                yield _chunk({"content": f"c{i} "})
                await asyncio.sleep(fault.chunk_delay)
            yield _chunk({}, finish="stop")
            if fault.usage:
                usage = {"prompt_tokens": 3, "completion_tokens": fault.chunks, "total_tokens": 3 + fault.chunks}
                final = {"id": "f1", "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            complete = True
        finally:
            if not complete:
                call.hang_up()
