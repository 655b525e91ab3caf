"""Starlette plumbing shared by the router and the edge apps.

Errors: every exception becomes an OpenAI-shaped JSON response in one place (the exception
handlers below), with ``x-request-id`` set. Request ids: ``asgi-correlation-id`` reads the
client's ``x-request-id`` (or makes one) and puts it on every response; handlers read it from
:func:`request_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from uuid import uuid4

import anyio
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from aws_lambda_powertools import Logger
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from r1edge import env
from r1edge.headers import CONNECTION, CONTENT_LENGTH, X_REQUEST_ID
from r1edge.protocol.errors import (
    MethodNotAllowed,
    NotFound,
    OpenAIError,
    RequestTimeout,
    RequestTooLarge,
    error_body,
    quote,
)

#: Not a child logger: a child writes through a parent logger named ``r1edge``, which no app
#: creates, so its lines reached only Python's last-resort handler (WARNING and up, plain text).
logger = Logger(service="r1edge")

T = TypeVar("T")

#: Status logged (never delivered) for a request whose client went away (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready.

    Attributes:
        received_bytes: how much of the request body had arrived (bytes), when the client left
            during its upload; ``None`` when it left while the answer was being prepared.
    """

    def __init__(self, received_bytes: int | None = None) -> None:
        super().__init__("the client closed the connection")
        self.received_bytes = received_bytes


async def unless_disconnected(
    request: Request,
    work: Callable[[], Awaitable[T]],
    on_disconnect: Callable[[], None] | None = None,
    poll_seconds: float = 0.25,
) -> T:
    """Run ``work()`` and cancel it if the client disconnects first (checked every
    ``poll_seconds``), so an abandoned request stops costing upstream or model time.

    Args:
        request: the Starlette request (its body already read).
        work: the coroutine function doing the request's work.
        on_disconnect: called first on disconnect (e.g. to stop a generation thread).

    Raises:
        ClientDisconnected: the client went away; ``work`` was cancelled.
    """
    task = asyncio.ensure_future(work())
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll_seconds)
        if done:
            return task.result()
        if await request.is_disconnected():
            if on_disconnect is not None:
                on_disconnect()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise ClientDisconnected


#: Longest client-supplied request id we keep (characters); longer ones are cut.
MAX_REQUEST_ID = 128


def request_id() -> str:
    """The current request's id (the client's ``x-request-id``, or a new UUID hex)."""
    return correlation_id.get() or uuid4().hex


#: The tenant of requests that carry no API key (before authentication is configured).
ANONYMOUS_TENANT = "anonymous"


def tenant(request: Request) -> str:
    """The tenant id the request acts for: ``request.state.tenant`` when authentication set it,
    else :data:`ANONYMOUS_TENANT`. Everything tenant-scoped (cache entries, jobs, idempotency
    keys, usage) is keyed by this value."""
    return getattr(request.state, "tenant", None) or ANONYMOUS_TENANT


def middleware() -> list[Middleware]:
    """Middleware both apps use: request ids on every request and response."""
    return [
        Middleware(
            CorrelationIdMiddleware,
            header_name=X_REQUEST_ID,
            update_request_header=True,
            generator=lambda: uuid4().hex,
            validator=None,  # keep the client's id, whatever its format (docs/ARCHITECTURE.md, "Contracts")
            transformer=lambda value: value[:MAX_REQUEST_ID],
        )
    ]


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its body iterator however the response ends.

    Under ASGI spec 2.4 servers (uvicorn), Starlette learns of a client disconnect from a failed
    ``send`` and stops, leaving the async generator to the garbage collector; closing it here
    runs its ``finally`` at once — which is what closes the upstream connection so the GPU stops
    generating (docs/ARCHITECTURE.md, Contracts).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def error_response(exc: OpenAIError) -> JSONResponse:
    """An OpenAI-shaped JSON error response with the error's status and headers."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _openai_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"Unknown request URL: {quote(request.method)} {quote(request.url.path)}."))
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method {quote(request.method)} is not allowed for {quote(request.url.path)}.")
        error.headers.update(exc.headers or {})
        return error_response(error)
    return JSONResponse(
        error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"request_id": request_id(), "path": request.url.path})
    return JSONResponse(
        error_body("The server had an error while processing your request.", "server_error", None, "internal_error"),
        status_code=500,
        headers={X_REQUEST_ID: request_id()},
    )


async def _client_closed(request: Request, exc: Exception) -> Response:
    """A client that left (during its upload, or while the app read its body): one INFO line, no
    traceback, and a 499 that the server drops but the metrics middleware counts."""
    logger.info(
        "client closed the request",
        extra={
            "request_id": request_id(),
            "path": request.url.path,
            "status": CLIENT_CLOSED_REQUEST,
            "received_bytes": getattr(exc, "received_bytes", None),
        },
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


#: Exception handlers for ``Starlette(exception_handlers=...)``. Starlette's own
#: ``ClientDisconnect`` (raised by ``request.body()``/``request.stream()`` on ``http.disconnect``)
#: is a client close too, wherever a body is read.
EXCEPTION_HANDLERS: dict[Any, Any] = {
    OpenAIError: _openai_error,
    HTTPException: _http_error,
    ClientDisconnected: _client_closed,
    ClientDisconnect: _client_closed,
    Exception: _unexpected,
}

#: Default longest wait for the next piece of a request body, seconds (nginx's
#: ``client_body_timeout`` is 60 s; an OpenAI request body is small and sent at once).
DEFAULT_BODY_TIMEOUT = 30.0

#: Most digits of a ``Content-Length`` read as a number (10**18 bytes is an exabyte).
MAX_LENGTH_DIGITS = 18


def seconds_from_env(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A time limit in seconds from the environment variable ``name`` (``default`` when unset or
    empty).

    Raises:
        ValueError: the value is not a finite number ≥ 0 (the message names the variable).
    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {raw!r}")
    return value


def body_timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The longest wait for the next piece of a request body: ``R1EDGE_BODY_TIMEOUT`` seconds,
    default :data:`DEFAULT_BODY_TIMEOUT`; 0 lets no read wait at all."""
    return seconds_from_env(env.R1EDGE_BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT, environ)


async def read_body(request: Request, max_bytes: int, timeout_seconds: float | None = None) -> bytes:
    """Read the request body, refusing more than ``max_bytes`` bytes and waiting at most
    ``timeout_seconds`` for each piece of it (an idle limit between reads, as nginx's
    ``client_body_timeout``; default :func:`body_timeout_seconds`).

    Raises:
        RequestTooLarge: ``Content-Length`` or the bytes actually sent exceed ``max_bytes``. A
            ``Content-Length`` of ASCII digits only (RFC 9110 §8.6) is read; of more than
            :data:`MAX_LENGTH_DIGITS` digits it is over any limit (Python refuses to read an int
            of over 4300 digits, and no body is that large).
        RequestTimeout: no piece of the body arrived for ``timeout_seconds`` (a 408 with
            ``Connection: close``: RFC 9110 section 15.5.9).
        ClientDisconnected: the client closed the connection before the body was complete
            (``received_bytes`` says how much had arrived).
    """
    declared = request.headers.get(CONTENT_LENGTH, "")
    if declared.isascii() and declared.isdigit() and (len(declared) > MAX_LENGTH_DIGITS or int(declared) > max_bytes):
        raise RequestTooLarge(f"Content-Length {quote(declared, 24)} is over the limit of {max_bytes} bytes.")
    limit = body_timeout_seconds() if timeout_seconds is None else timeout_seconds
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    try:
        while True:
            with anyio.move_on_after(limit) as waited:
                chunk = await anext(stream, None)
            if waited.cancelled_caught:
                logger.info(
                    "request body timed out",
                    extra={"request_id": request_id(), "path": request.url.path, "received_bytes": size},
                )
                raise RequestTimeout(
                    f"No part of the request body arrived for {limit:g} seconds; send the whole body promptly.",
                    headers={CONNECTION: "close"},
                )
            if chunk is None:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise RequestTooLarge(f"Request body is over the limit of {max_bytes} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected(received_bytes=size) from None
    finally:
        await stream.aclose()
