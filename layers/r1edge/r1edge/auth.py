"""API-key authentication, per-key limits and usage records for the router, as one ASGI middleware
plus three calls the chat handler makes.

Every path except :data:`PUBLIC_PATHS` needs a key (``Authorization: Bearer <key>`` or
``x-api-key``; see :mod:`r1edge.keys`). The middleware authenticates it, sets
``request.state.tenant`` (read by :func:`r1edge.web.tenant`: everything tenant-scoped keys on it)
and takes one request from the key's request bucket (:mod:`r1edge.ratelimit`). The chat handler
then takes the request's estimated tokens (:func:`charge_tokens`) and, once the answer is
complete, settles them against the real usage and records it (:func:`finish`,
:func:`metered`). Every answer to an authenticated request carries the ``x-ratelimit-*``
headers, with what was left after its last charge.

Authentication is on when a :class:`Guard` is given to :func:`r1edge.router.create_app`, or when
``R1EDGE_KEYS_TABLE`` is set (:meth:`Guard.from_env`; ``template.yaml`` sets it for every
deployed router, ``make run`` and ``make run-router`` always). Without either, requests act for
the tenant ``anonymous`` and no limits apply (unit tests, benchmarks of the bare router).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from aws_lambda_powertools import Logger
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r1edge.errors import ConfigError, OpenAIError, Overloaded
from r1edge.keys import KEYS_SECRET_ENV, KEYS_TABLE_ENV, ApiKey, Authenticator, DynamoKeyStore, bearer_key, read_secret
from r1edge.ratelimit import LIMITS_TABLE_ENV, DynamoBucketStore, Limits, LimitStatus, RateLimiter
from r1edge.usage import USAGE_TABLE_ENV, DynamoUsageStore, Usage, UsageRecorder, usage_of
from r1edge.web import error_response

logger = Logger(service="r1edge-router", child=True)

#: Paths that need no key: health checks, the adapter's readiness check, metrics scrapes.
PUBLIC_PATHS = frozenset({"/health", "/ping", "/metrics"})
#: Path prefixes that need no key: config files, public in AWS (the config function behind
#: CloudFront), which the local stack serves from the router's port.
PUBLIC_PREFIXES = ("/v1/configs/",)
#: Environment variable that turns on logging of prompt and completion text (``true``).
LOG_CONTENT_ENV = "R1EDGE_LOG_CONTENT"


def log_content_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether prompt and completion text may be logged (``R1EDGE_LOG_CONTENT=true``; off by
    default: prompts are the users' data)."""
    environ = os.environ if environ is None else environ
    return environ.get(LOG_CONTENT_ENV, "").strip().lower() == "true"


@dataclass
class Guard:
    """What the router needs to let a request in: the key check, the limiter and the usage
    recorder (each behind a small store interface; DynamoDB in AWS and locally)."""

    authenticator: Authenticator
    limiter: RateLimiter
    usage: UsageRecorder

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Guard | None:
        """The guard described by ``R1EDGE_KEYS_TABLE``, ``R1EDGE_KEYS_SECRET``,
        ``R1EDGE_LIMITS_TABLE`` and ``R1EDGE_USAGE_TABLE``; ``None`` when the first is unset.

        Raises:
            ConfigError: the keys table is set but another of the four is not.
        """
        environ = os.environ if environ is None else environ
        table = environ.get(KEYS_TABLE_ENV)
        if not table:
            return None
        missing = [name for name in (KEYS_SECRET_ENV, LIMITS_TABLE_ENV, USAGE_TABLE_ENV) if not environ.get(name)]
        if missing:
            raise ConfigError(f"{KEYS_TABLE_ENV} is set, so API keys are on; also set {', '.join(missing)}")
        secret_name = environ[KEYS_SECRET_ENV]
        return cls(
            Authenticator(DynamoKeyStore(table), lambda: read_secret(secret_name)),
            RateLimiter(DynamoBucketStore(environ[LIMITS_TABLE_ENV])),
            UsageRecorder(DynamoUsageStore(environ[USAGE_TABLE_ENV])),
        )


def limits_of(key: ApiKey) -> Limits:
    return Limits(key.requests_per_minute, key.tokens_per_minute)


class ApiKeyMiddleware:
    """Pure ASGI middleware (streams pass through untouched): authenticate, take one request,
    add ``x-ratelimit-*`` headers to the answer. Errors are answered here in the OpenAI shape:
    401 (with ``WWW-Authenticate: Bearer``, RFC 9110 section 11.6.1), 429, or 503 when the key
    or limits store cannot be reached."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["guard"] = self.guard

        async def send_with_limits(message: Message) -> None:
            status: LimitStatus | None = state.get("ratelimit")
            if message["type"] == "http.response.start" and status is not None:
                headers = MutableHeaders(scope=message)
                for name, value in status.headers().items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            key = bearer_key(Headers(scope=scope))
            record = await anyio.to_thread.run_sync(self.guard.authenticator.authenticate, key)
            state["tenant"], state["api_key"] = record.tenant, record
            state["ratelimit"] = await anyio.to_thread.run_sync(
                self.guard.limiter.acquire, record.key_id, limits_of(record), 1, 0
            )
        except OpenAIError as exc:
            if exc.status == 401:
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="r1edge"')
                logger.info("request refused: API key", extra={"path": scope["path"], "reason": exc.message})
            elif exc.status == 429:
                logger.info("request refused: rate limit", extra={"tenant": state.get("tenant"), "type": exc.type})
            await error_response(exc)(scope, receive, send_with_limits)
            return
        except Exception as exc:  # noqa: BLE001 - a store outage is a 503, never a 500 or a way in
            logger.error("key or limits store unavailable", extra={"error": type(exc).__name__})
            error = Overloaded("API keys cannot be checked right now; please retry.", headers={"Retry-After": "1"})
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send_with_limits)


def _guard_and_key(request: Request) -> tuple[Guard, ApiKey] | None:
    guard = getattr(request.state, "guard", None)
    key = getattr(request.state, "api_key", None)
    return (guard, key) if guard is not None and key is not None else None


async def charge_tokens(request: Request, tokens: int) -> int:
    """Take ``tokens`` (the request's estimate) from its key's token bucket; return the amount
    charged (0 when authentication is off).

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    found = _guard_and_key(request)
    if found is None or tokens <= 0:
        return 0
    guard, key = found
    limits = limits_of(key)
    request.state.ratelimit = await anyio.to_thread.run_sync(guard.limiter.acquire, key.key_id, limits, 0, tokens)
    return min(tokens, limits.tokens_per_minute)


async def finish(request: Request, charged: int, route: str | None, usage: Usage | None) -> None:
    """Settle the charge against ``usage`` (or refund it all when there is no answer:
    ``route`` is ``None``) and, for an answer, add it to the tenant's usage record. Runs shielded
    from cancellation, so a client going away cannot lose the record."""
    found = _guard_and_key(request)
    if found is None:
        return
    guard, key = found
    used = usage.total_tokens if (usage is not None and route is not None) else 0

    def work() -> None:
        guard.limiter.settle(key.key_id, limits_of(key), charged - used)
        if route is not None:
            guard.usage.record(key.tenant, route, usage or Usage())

    with anyio.CancelScope(shield=True):
        try:
            await anyio.to_thread.run_sync(work)
        except Exception as exc:  # noqa: BLE001 - the answer was given; a lost record is logged, not a failure
            logger.error("usage not recorded", extra={"tenant": key.tenant, "error": type(exc).__name__})


async def metered(
    request: Request,
    stream: AsyncIterator[bytes],
    charged: int,
    route: str,
    prompt_estimate: int,
    chars_per_token: float,
    on_text: Callable[[str], None] | None = None,
) -> AsyncIterator[bytes]:
    """Pass an SSE stream through, reading its ``usage`` (when the client asked for it) or
    estimating completion tokens from the streamed text, then :func:`finish` when it ends,
    however it ends. ``on_text`` receives the streamed text at the end (content logging)."""
    usage: Usage | None = None
    chars = 0
    parts: list[str] = []
    try:
        async for piece in stream:
            for line in piece.split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    continue
                usage = usage_of(chunk) or usage
                for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if isinstance(delta, dict):
                        for field in ("content", "reasoning_content"):
                            text = delta.get(field)
                            if isinstance(text, str):
                                chars += len(text)
                                if on_text is not None:
                                    parts.append(text)
            yield piece
    finally:
        if usage is None:
            usage = Usage(prompt_estimate, math.ceil(chars / chars_per_token))
        if on_text is not None:
            on_text("".join(parts))
        await finish(request, charged, route, usage)
