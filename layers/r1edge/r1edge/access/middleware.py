"""API-key authentication, per-key limits, usage records and content logging for the router, as
one ASGI middleware plus one call the chat handler makes.

Every path except :data:`PUBLIC_PATHS` needs a key (``Authorization: Bearer <key>`` or
``x-api-key``; see :mod:`r1edge.access.keys`). The middleware authenticates it, sets
``request.state.tenant`` (read by :func:`r1edge.protocol.web.tenant`: everything tenant-scoped keys on it)
and takes one request from the key's request bucket (:mod:`r1edge.access.ratelimit`). The chat handler
calls :func:`admit_chat`, which takes the request's estimated tokens from the token bucket. The
middleware watches the answer go out (JSON or SSE, as it passes, without holding it back) and,
when it has ended — however it ended — settles the charge against the answer's ``usage`` (or an
estimate from its text), adds it to the tenant's usage record, or gives the tokens back when
there was no answer. Every answer to an authenticated request carries the ``x-ratelimit-*``
headers, with what was left after its last charge.

Authentication is on when a :class:`Guard` is given to :func:`r1edge.apps.router.create_app`, or when
``R1EDGE_KEYS_TABLE`` is set (:meth:`Guard.from_env`; ``template.yaml`` sets it for every
deployed router, ``make run`` and ``make run-router`` always). Without either, requests act for
the tenant ``anonymous`` and no limits apply (unit tests, benchmarks of the bare router); the
middleware then only logs content, when ``R1EDGE_LOG_CONTENT=true``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import anyio
from aws_lambda_powertools import Logger
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r1edge.access.keys import (
    KEYS_SECRET_ENV,
    KEYS_TABLE_ENV,
    ApiKey,
    Authenticator,
    DynamoKeyStore,
    bearer_key,
    read_secret,
)
from r1edge.access.ratelimit import LIMITS_TABLE_ENV, DynamoBucketStore, Limits, LimitStatus, RateLimiter
from r1edge.access.usage import USAGE_TABLE_ENV, DynamoUsageStore, Usage, UsageRecorder, usage_of
from r1edge.protocol.errors import ConfigError, OpenAIError, Overloaded
from r1edge.protocol.web import error_response

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


#: Most bytes of a JSON answer kept to read its ``usage`` (larger answers are estimated).
MAX_METERED_JSON = 4 * 1024 * 1024


class _Meter:
    """Reads an answer as it goes out: its status, route (``x-r1edge-route``), and the usage and
    text of a JSON completion or an SSE stream (lines may split across body messages)."""

    def __init__(self) -> None:
        self.status = 0
        self.route: str | None = None
        self.stream = False
        self.json = bytearray()
        self.pending = b""
        self.usage: Usage | None = None
        self.parts: list[str] = []

    def start(self, message: Message) -> None:
        self.status = message["status"]
        headers = Headers(raw=message.get("headers", []))
        self.route = headers.get("x-r1edge-route")
        self.stream = headers.get("content-type", "").startswith("text/event-stream")

    def feed(self, body: bytes) -> None:
        if not self.stream:
            if len(self.json) + len(body) <= MAX_METERED_JSON:
                self.json.extend(body)
            return
        lines = (self.pending + body).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    continue
                self.usage = usage_of(chunk) or self.usage
                self._texts(chunk, "delta")

    def _texts(self, obj: Any, field: str) -> None:
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            part = choice.get(field) if isinstance(choice, dict) else None
            if isinstance(part, dict):
                for name in ("content", "reasoning_content"):
                    if isinstance(part.get(name), str):
                        self.parts.append(part[name])

    def answered(self) -> bool:
        return self.status == 200 and self.route is not None

    def result(self, prompt_estimate: int, chars_per_token: float) -> tuple[Usage, str]:
        """The answer's usage (its own, else estimated from its text) and its text."""
        if not self.stream and self.json:
            try:
                completion = json.loads(bytes(self.json))
            except ValueError:
                completion = None
            self.usage = usage_of(completion)
            self._texts(completion, "message")
        text = "".join(self.parts)
        return self.usage or Usage(prompt_estimate, math.ceil(len(text) / chars_per_token)), text


class ApiKeyMiddleware:
    """Pure ASGI middleware (streams pass through untouched): authenticate, take one request,
    add ``x-ratelimit-*`` headers to the answer, then settle and record the chat's tokens when
    the answer has ended. Errors are answered here in the OpenAI shape: 401 (with
    ``WWW-Authenticate: Bearer``, RFC 9110 section 11.6.1), 429, or 503 when the key or limits
    store cannot be reached. With ``guard=None`` it only logs content (``R1EDGE_LOG_CONTENT``)."""

    def __init__(self, app: ASGIApp, guard: Guard | None, log_content: bool = False) -> None:
        self.app = app
        self.guard = guard
        self.log_content = log_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["guard"] = self.guard
        state["log_content"] = self.log_content
        meter = _Meter()

        async def send_metered(message: Message) -> None:
            if message["type"] == "http.response.start":
                meter.start(message)
                status: LimitStatus | None = state.get("ratelimit")
                if status is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in status.headers().items():
                        if name not in headers:
                            headers[name] = value
            elif message["type"] == "http.response.body" and "prompt_estimate" in state:
                meter.feed(message.get("body", b""))
            await send(message)

        if self.guard is not None and not await self._admit(scope, receive, send_metered, state):
            return
        try:
            await self.app(scope, receive, send_metered)
        finally:
            if "prompt_estimate" in state:  # a chat request: settle, record, log
                with anyio.CancelScope(shield=True):
                    await _finish(state, meter)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]) -> bool:
        assert self.guard is not None
        try:
            key = bearer_key(Headers(scope=scope))
            record = await anyio.to_thread.run_sync(self.guard.authenticator.authenticate, key)
            state["tenant"], state["api_key"] = record.tenant, record
            state["ratelimit"] = await anyio.to_thread.run_sync(
                self.guard.limiter.acquire, record.key_id, limits_of(record), 1, 0
            )
            return True
        except OpenAIError as exc:
            if exc.status == 401:
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="r1edge"')
                logger.info("request refused: API key", extra={"path": scope["path"], "reason": exc.message})
            elif exc.status == 429:
                logger.info("request refused: rate limit", extra={"tenant": state.get("tenant"), "type": exc.type})
            await error_response(exc)(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - a store outage is a 503, never a 500 or a way in
            logger.error("key or limits store unavailable", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            error = Overloaded("API keys cannot be checked right now; please retry.", headers={"Retry-After": "1"})
            await error_response(error)(scope, receive, send)
        return False


async def _charge(request: Request, prompt: int, completion: int, classifier: Any) -> dict[str, Any] | None:
    """Take ``prompt + completion`` estimated tokens from the request's key's token bucket and
    note the charge for the middleware to settle; the request's state, or ``None`` without the
    middleware.

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    state = request.scope.get("state")
    if state is None or "guard" not in state:
        return None
    guard: Guard | None = state["guard"]
    key: ApiKey | None = state.get("api_key")
    charged = 0
    if guard is not None and key is not None:
        limits = limits_of(key)
        tokens = prompt + completion
        state["ratelimit"] = await anyio.to_thread.run_sync(guard.limiter.acquire, key.key_id, limits, 0, tokens)
        charged = min(tokens, limits.tokens_per_minute)
    state.update(prompt_estimate=prompt, chars_per_token=classifier.chars_per_token, charged=charged)
    return state


async def admit_chat(request: Request, messages: list[dict[str, Any]], max_tokens: int, classifier: Any) -> None:
    """Called by the chat handler once a request is valid: take its estimated tokens (prompt
    estimate plus ``max_tokens``; ``classifier`` gives ``chars_per_token``) from its key's token
    bucket, and log its messages when ``R1EDGE_LOG_CONTENT=true``. The middleware settles the
    charge when the answer has ended. Without the middleware, nothing happens.

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    from r1edge.routing.classifier import estimate_prompt_tokens

    prompt = estimate_prompt_tokens(messages, classifier.chars_per_token)
    state = await _charge(request, prompt, max_tokens, classifier)
    if state is not None and state.get("log_content"):
        logger.info("chat request content", extra={"request_id": _request_id(), "messages": messages})


async def admit_jobs(request: Request, requests: list[dict[str, Any]], classifier: Any) -> None:
    """Called by ``POST /v1/jobs`` once a submission is valid: take the estimated tokens of all
    its requests (prompt estimate plus ``max_tokens`` each, the job cap when absent) from the
    key's token bucket at once. A job is paid up front: the charge is kept (:func:`keep_charge`)
    and recorded in the usage table under route ``queue`` as that estimate, since the worker
    answers after this request has ended. Without the middleware, nothing happens.

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    from r1edge.routing.classifier import estimate_prompt_tokens

    prompt = sum(estimate_prompt_tokens(r.get("messages") or [], classifier.chars_per_token) for r in requests)
    completion = sum(int(r.get("max_completion_tokens") or r.get("max_tokens") or 0) for r in requests)
    state = await _charge(request, prompt, completion, classifier)
    if state is not None:
        state["kept"] = Usage(prompt, completion)


def keep_charge(request: Request) -> None:
    """Keep the tokens this request was charged (no refund, no settling) and record them as its
    usage under route ``queue``: its answer is a queued job, paid up front
    (``Prefer: respond-async``)."""
    state = request.scope.get("state")
    if state is not None and "prompt_estimate" in state:
        state["kept"] = Usage(state["prompt_estimate"], max(0, state.get("charged", 0) - state["prompt_estimate"]))


def _request_id() -> str:
    from r1edge.protocol.web import request_id

    return request_id()


async def _finish(state: dict[str, Any], meter: _Meter) -> None:
    """Settle the tokens charged against the answer's usage (all back when there was no
    answer), add the answer to the tenant's usage record, and log its text if asked to."""
    usage, text = meter.result(state["prompt_estimate"], state["chars_per_token"])
    if state.get("log_content") and meter.answered():
        logger.info("chat completion content", extra={"request_id": _request_id(), "completion_text": text})
    guard: Guard | None = state.get("guard")
    key: ApiKey | None = state.get("api_key")
    if guard is None or key is None:
        return
    kept: Usage | None = state.get("kept") if 200 <= meter.status < 300 else None
    answered = meter.answered()
    used = usage.total_tokens if answered else 0

    def work() -> None:
        if kept is not None:  # a queued job, paid up front: nothing to settle
            guard.usage.record(key.tenant, "queue", kept)
            return
        guard.limiter.settle(key.key_id, limits_of(key), state.get("charged", 0) - used)
        if answered:
            guard.usage.record(key.tenant, meter.route or "unknown", usage)

    try:
        await anyio.to_thread.run_sync(work)
    except Exception as exc:  # noqa: BLE001 - the answer was given; a lost record is logged, not a failure
        logger.error("usage not recorded", extra={"tenant": key.tenant, "error": type(exc).__name__})
