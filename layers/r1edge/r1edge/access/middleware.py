"""API-key authentication, per-key limits, usage records and content logging for the router, as
one pure ASGI middleware (:class:`ApiKeyMiddleware`).

Every path except :data:`PUBLIC_PATHS` and :data:`PUBLIC_PREFIXES` needs a key
(``Authorization: Bearer <key>`` or ``x-api-key``; see :mod:`r1edge.access.keys`). The middleware
puts the request's :class:`~r1edge.access.context.AccessContext` in the ASGI scope's ``state``,
authenticates the key, sets ``request.state.tenant`` (read by :func:`r1edge.protocol.web.tenant`:
everything tenant-scoped keys on it) and takes one request from the key's request bucket
(:mod:`r1edge.access.ratelimit`). The chat handler then charges the request's estimated tokens
(:mod:`r1edge.access.charging`). The middleware watches the answer go out (JSON or SSE, as it
passes, without holding it back: :mod:`r1edge.access.metering`) and, when it has ended — however
it ended — settles the charge (:func:`r1edge.access.charging.settle`). Every answer to an
authenticated request carries the ``x-ratelimit-*`` headers, with what was left after its last
charge.

The wiring (:func:`r1edge.apps.router.create_app`) installs it when there is a
:class:`~r1edge.access.guard.Guard`, or when ``R1EDGE_LOG_CONTENT=true``; without a guard it only
logs content.
"""

from __future__ import annotations

from dataclasses import replace

import anyio
from aws_lambda_powertools import Logger
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r1edge.access.charging import settle
from r1edge.access.context import AccessContext, context_of, put
from r1edge.access.guard import Guard, limits_of
from r1edge.access.keys import bearer_key
from r1edge.access.metering import Meter
from r1edge.headers import RETRY_AFTER
from r1edge.protocol.errors import OpenAIError, Overloaded
from r1edge.protocol.web import error_response

logger = Logger(service="r1edge-router", child=True)

#: Paths that need no key: health checks, the adapter's readiness check, metrics scrapes.
PUBLIC_PATHS = frozenset({"/health", "/ping", "/metrics"})
#: Path prefixes that need no key: config files, public in AWS (the config function behind
#: CloudFront), which the local stack serves from the router's port.
PUBLIC_PREFIXES = ("/v1/configs/",)
#: Paths of the Anthropic Messages API (:mod:`r1edge.dialects.anthropic`): their refusals here
#: are in Anthropic's error shape (API reference, "Errors"), r1edge's 503 as 529.
ANTHROPIC_PREFIX = "/v1/messages"
#: Anthropic's error type for each status this middleware answers with.
ANTHROPIC_ERRORS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def refusal(path: str, exc: OpenAIError) -> Response:
    """The answer to a refused request: OpenAI's error shape, or Anthropic's
    ``{"type": "error", "error": {"type", "message"}}`` under :data:`ANTHROPIC_PREFIX` (503 →
    529 ``overloaded_error``); status headers (``Retry-After``, ``WWW-Authenticate``) kept."""
    if path != ANTHROPIC_PREFIX and not path.startswith(ANTHROPIC_PREFIX + "/"):
        return error_response(exc)
    status = 529 if exc.status == 503 else exc.status
    kind = "overloaded_error" if status == 529 else ANTHROPIC_ERRORS.get(status, "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": exc.message}}
    return JSONResponse(body, status_code=status, headers=exc.headers)


class ApiKeyMiddleware:
    """Pure ASGI middleware (streams pass through untouched): authenticate, take one request,
    add ``x-ratelimit-*`` headers to the answer, then settle and record the chat's tokens when
    the answer has ended. Errors are answered here in the OpenAI shape: 401 (with
    ``WWW-Authenticate: Bearer``, RFC 9110 section 11.6.1), 429, or 503 when the key or limits
    store cannot be reached. With ``guard=None`` it only logs content (``R1EDGE_LOG_CONTENT``).

    Args:
        app: the app behind it.
        guard: the key check, limiter and usage recorder, or ``None``.
        log_content: log prompt and completion text (``R1EDGE_LOG_CONTENT=true``).
    """

    def __init__(self, app: ASGIApp, guard: Guard | None, log_content: bool = False) -> None:
        self.app = app
        self.guard = guard
        self.log_content = log_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        put(scope, AccessContext(self.guard, self.log_content))
        meter = Meter()

        def current() -> AccessContext:
            context = context_of(scope)
            assert context is not None
            return context

        async def send_metered(message: Message) -> None:
            if message["type"] == "http.response.start":
                meter.start(message)
                status = current().ratelimit
                if status is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in status.headers().items():
                        if name not in headers:
                            headers[name] = value
            elif message["type"] == "http.response.body" and current().charge is not None:
                meter.feed(message.get("body", b""))
            await send(message)

        if self.guard is not None and not await self._admit(scope, receive, send_metered):
            return
        try:
            await self.app(scope, receive, send_metered)
        finally:
            if current().charge is not None:  # a chat request: settle, record, log
                with anyio.CancelScope(shield=True):
                    await settle(current(), meter)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Authenticate and take one request from the key's request bucket; ``False`` when an
        error answer has been sent instead."""
        assert self.guard is not None
        context = context_of(scope)
        assert context is not None
        try:
            key = bearer_key(Headers(scope=scope))
            record = await anyio.to_thread.run_sync(self.guard.authenticator.authenticate, key)
            scope["state"]["tenant"] = record.tenant  # read by r1edge.protocol.web.tenant
            context = put(scope, replace(context, key=record))
            status = await anyio.to_thread.run_sync(self.guard.limiter.acquire, record.key_id, limits_of(record), 1, 0)
            put(scope, replace(context, ratelimit=status))
            return True
        except OpenAIError as exc:
            if exc.status == 401:
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="r1edge"')
                logger.info("request refused: API key", extra={"path": scope["path"], "reason": exc.message})
            elif exc.status == 429:
                logger.info("request refused: rate limit", extra={"tenant": context.tenant, "type": exc.type})
            await refusal(scope["path"], exc)(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - a store outage is a 503, never a 500 or a way in
            logger.error("key or limits store unavailable", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            error = Overloaded("API keys cannot be checked right now; please retry.", headers={RETRY_AFTER: "1"})
            await refusal(scope["path"], error)(scope, receive, send)
        return False
