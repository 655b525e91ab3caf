"""The router's core: pick a tier, run the one retry loop over its endpoints, relay the answer.

``Gateway.complete`` takes a validated request and returns a :class:`Routed` answer (a JSON
completion, or an SSE byte stream), or raises an :class:`~r1edge.protocol.errors.OpenAIError`.

The retry loop (docs/ARCHITECTURE.md, Retry rules; "fallbacks wrap retries wrap one attempt"): each attempt
goes to the endpoint :class:`~r1edge.resilience.balancer.Pool` chooses — failover to an endpoint not yet
tried comes first and costs no wait; retrying an endpoint already tried waits a full-jitter
backoff with the upstream's ``Retry-After`` as a floor, and never past the deadline (an endpoint
whose wait would overrun it is taken out instead). Each endpoint may be tried
``retry.max_attempts`` times. Retryable: connection errors, timeouts before the first byte, 408,
429, 5xx, a body that is not a completion, a stream that is not SSE or fails before content.
400/413/422 are relayed at once with the upstream's message and leave the breaker alone.
401/403/404 take the endpoint out (logged loudly); with none left the client gets 502, never a
401 that blames its key. Backends never retry by themselves.

Cascade (``model: auto`` only): a request the classifier sends to the edge goes to the cluster
instead when the edge refuses it as too long for its context window, or answers with a
confidence (its ``x-r1edge-confidence`` header) under ``cascade.threshold``; ``x-r1edge-reason``
says which. A JSON answer is judged whole; a stream is judged on its first
``cascade.stream_window`` tokens, which the edge generates before it sends its headers (asked for
with ``x-r1edge-confidence-window``), so nothing has reached the client when the router decides.
If the cluster then cannot answer, the edge's answer is used after all (a JSON answer as kept; a
stream is asked of the edge again, without the hold). An edge tier that cannot answer at all
(busy, failing, timing out) also sends ``auto`` requests to the cluster.

Streams: the client's response is held until the upstream's first content chunk, so a failure
before content falls back silently and the headers name the endpoint that answers. If no content
comes within ``keepalive_interval`` seconds the response starts and ``: keep-alive`` comments
flow until it does (a fallback may still happen then, silently, before any content). Once content
has reached the client, a failure ends the stream with ``upstream_stream_truncated`` and no
``[DONE]``. Closing the stream (client gone) closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from aws_lambda_powertools import Logger

from r1edge.protocol.errors import ModelNotFound, OpenAIError, Overloaded, RateLimited, UpstreamError, UpstreamTimeout
from r1edge.protocol.sse import DONE, StreamTruncated, iter_chunks, parse_completion, sse_data, truncated_event
from r1edge.protocol.validation import ChatRequest, upstream_body
from r1edge.resilience.balancer import EndpointState, Pool
from r1edge.resilience.breaker import BreakerSettings
from r1edge.resilience.load import parse_engine_load
from r1edge.resilience.retry import Outcome, classify_status, parse_retry_after, wait_before_retry
from r1edge.routing.classifier import Decision, classify
from r1edge.routing.config import MODEL_TIERS, Endpoint, RoutingConfig, check_tier_limits
from r1edge.routing.ports import GatewayMetrics, HealthSource
from r1edge.routing.upstream import Upstream

logger = Logger(service="r1edge-router", child=True)


#: Namespace for UUIDs derived from client request ids that are not UUIDs themselves.
REQUEST_ID_NAMESPACE = uuid.UUID("6f0d2b8e-3c1a-5b7e-9a40-2f6e1d9c8b71")


def upstream_request_id(request_id: str) -> str:
    """The ``x-request-id`` sent upstream: the client's id when it is a UUID, else a UUID derived
    from it (UUIDv5), since some OpenAI-compatible servers (llama-cpp-python's, through
    starlette-context) answer 400 to a request id that is not a UUID. Both are logged."""
    try:
        uuid.UUID(request_id)
    except ValueError:
        return str(uuid.uuid5(REQUEST_ID_NAMESPACE, request_id))
    return request_id


@dataclass
class Routed:
    """A routed answer.

    Attributes:
        decision: the tier and the reason it was chosen.
        endpoint: the endpoint that answered.
        attempts: upstream calls made, this one included.
        completion: the chat completion object (non-streamed requests).
        stream: SSE bytes to send (streamed requests); closing it closes the upstream.
    """

    decision: Decision
    endpoint: Endpoint
    attempts: int
    completion: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """The ``x-r1edge-*`` response headers (docs/ARCHITECTURE.md, Contracts), with the edge's own
        (:data:`RELAYED_HEADERS`) passed on."""
        return {**self.upstream_headers, **route_headers(self.decision, self.endpoint.name, self.attempts)}

    @property
    def confidence(self) -> float | None:
        """The edge's ``x-r1edge-confidence`` for this answer, if it sent one."""
        return _confidence(self.upstream_headers)


#: Edge response headers passed on to the client (see :mod:`r1edge.edge.app`).
RELAYED_HEADERS = ("x-r1edge-confidence", "x-r1edge-confidence-tokens", "x-r1edge-max-tokens-clamped")


def relayed_headers(headers: httpx.Headers) -> dict[str, str]:
    """The :data:`RELAYED_HEADERS` present in an upstream response."""
    return {name: headers[name] for name in RELAYED_HEADERS if name in headers}


def _confidence(headers: dict[str, str] | httpx.Headers) -> float | None:
    try:
        value = float(headers.get("x-r1edge-confidence", "nan"))
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


class _LowConfidence(Exception):
    """A streamed edge answer whose first tokens fell under the cascade threshold (closed)."""

    def __init__(self, confidence: float) -> None:
        super().__init__(confidence)
        self.confidence = confidence


def route_headers(decision: Decision | None, endpoint: str | None, attempts: int) -> dict[str, str]:
    """``x-r1edge-route``, ``x-r1edge-reason``, ``x-r1edge-upstream`` and ``x-r1edge-attempts``."""
    headers: dict[str, str] = {"x-r1edge-attempts": str(attempts)}
    if decision is not None:
        headers["x-r1edge-route"] = decision.tier
        headers["x-r1edge-reason"] = decision.reason
    if endpoint is not None:
        headers["x-r1edge-upstream"] = endpoint
    return headers


def _upstream_client_error(response_body: bytes, status: int) -> OpenAIError:
    """Relay an upstream 400/413/422, keeping its message: OpenAI's ``{"error": {...}}``, the
    top-level ``{"object": "error", "message": ...}`` of SGLang and older vLLM, FastAPI's
    ``{"detail": ...}``, or the text of the body. The type is always ``invalid_request_error``
    (docs/ARCHITECTURE.md, "Errors": a 4xx for the client's request)."""
    message, param, code = f"upstream rejected the request (HTTP {status})", None, None
    try:
        body = json.loads(response_body)
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param, code = (v if isinstance(v, str) else None for v in (error.get("param"), error.get("code")))
        elif isinstance(error, str):
            message = error
        elif isinstance(body.get("message"), str):
            message = body["message"]
        elif body.get("detail") is not None:
            detail = body["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail)[:1000]
    except (ValueError, AttributeError):
        text = response_body.decode("utf-8", "replace").strip()
        if text:
            message = text[:1000]
    return OpenAIError(message, status=status, type="invalid_request_error", param=param, code=code)


class Gateway:
    """Routes validated chat requests to the edge or cluster tier, with one retry loop.

    Args:
        config: the routing configuration.
        upstream: the HTTP transport.
        clock: monotonic clock, seconds (injected in tests).
        sleep: ``async (seconds) -> None`` used for every backoff wait (injected in tests, so no
            test sleeps for real).
        wall_clock: seconds since the epoch, for HTTP-date ``Retry-After`` values.
        rng: randomness for the backoff jitter.
        recorder: where metrics go (retries, fallbacks, breaker transitions, tokens, the
            endpoints' health): a :class:`~r1edge.routing.ports.GatewayMetrics`, required so that
            no caller's metrics go to a recorder nobody flushes (the wiring passes the app's
            :class:`~r1edge.observe.metrics.Recorder`).
        health: the health table's view (a :class:`~r1edge.routing.ports.HealthSource`);
            ``None``: passive signals only.
    """

    def __init__(
        self,
        config: RoutingConfig,
        upstream: Upstream,
        *,
        recorder: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        health: HealthSource | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.clock = clock
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.metrics = recorder
        self.health = health
        self.pool = self._pool(config)

    def _pool(self, config: RoutingConfig) -> Pool:
        return Pool(
            config.endpoints,
            BreakerSettings(**config.breaker.model_dump()),
            latency_threshold=config.latency.threshold,
            hysteresis=config.latency.hysteresis,
            load_target=config.load.target,
            rng=self.rng,
            on_breaker=lambda name, state: self.metrics.breaker(name, state.value),
        )

    def reconfigure(self, config: RoutingConfig) -> None:
        """Use a new routing config from the next request on. An endpoint whose settings (and
        the breaker and load settings) did not change keeps its state — breaker, latency
        estimate, load reading, requests in flight; requests already running finish as they began."""
        old_config, old_states = self.config, self.pool.states
        self.config = config
        self.pool = self._pool(config)
        if self.health is not None:
            self.health.max_age, self.health.stale_after = config.health.max_age, config.health.stale_after
        if config.breaker != old_config.breaker or config.load.target != old_config.load.target:
            return
        for name, state in self.pool.states.items():
            previous = old_states.get(name)
            if previous is not None and previous.endpoint == state.endpoint:
                self.pool.states[name] = previous

    async def refresh_load(self, tier: str) -> None:
        """Re-read ``/metrics`` of the tier's endpoints that have ``metrics: true`` and whose last
        reading is older than ``load.max_age`` seconds."""
        now = self.clock()
        stale = [
            s
            for s in self.pool.tier(tier)
            if s.endpoint.metrics and (s.load_at is None or now - s.load_at > self.config.load.max_age)
        ]
        if not stale:
            return
        texts = await asyncio.gather(*(self.upstream.scrape_metrics(s.endpoint) for s in stale))
        for state, text in zip(stale, texts, strict=True):
            engine = parse_engine_load(text) if text else None
            state.load, state.load_at = (engine.load if engine else None), now
            self._report(state)

    async def refresh_health(self) -> None:
        """Merge the health table into the endpoints' states (re-read when older than
        ``health.max_age``): a fresh record sets the endpoint's health status (``down`` is
        skipped by :meth:`Pool.choose <r1edge.resilience.balancer.Pool.choose>`) and its engine load (used
        when the router reads no ``/metrics`` itself); each new 1-token completion probe is one
        more time-to-first-byte sample for the latency estimate. Records older than
        ``health.stale_after`` are ignored: the endpoint is back to passive signals only."""
        view = self.health
        if view is None:
            return
        await view.refresh_if_due()
        fresh = view.fresh()
        for name, state in self.pool.states.items():
            record = fresh.get(name)
            if record is None:
                state.health, state.health_load = None, None
            else:
                state.health, state.health_load = record.status, record.load
                if (
                    record.completion_ok
                    and record.completion_latency is not None
                    and record.completion_at != state.health_completion_at
                ):
                    state.observe_ttfb(record.completion_latency)
                    state.health_completion_at = record.completion_at
            self._report(state)

    def _report(self, state: EndpointState) -> None:
        """The endpoint's health and load gauges, as the router sees them now."""
        up = None if state.health is None else state.health != "down"
        self.metrics.endpoint_health(state.endpoint.name, state.endpoint.tier, up, state.effective_load)

    def decide(self, request: ChatRequest) -> Decision:
        """Map the requested model to a tier: ``auto`` classifies; ``edge`` and ``deepseek-r1``
        force a tier.

        Raises:
            ModelNotFound: an unknown model name, or a forced tier with no endpoint configured.
        """
        if request.model not in MODEL_TIERS:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist. Use one of: {', '.join(self.config.served_models())}.",
                param="model",
            )
        forced = MODEL_TIERS[request.model]
        if forced is not None:
            if not self.config.tier_endpoints(forced):
                raise ModelNotFound(f"The model '{request.model}' has no endpoint configured.", param="model")
            return Decision(forced, f"model:{request.model}", 0)
        decision = classify(request, self.config.classifier)
        if not self.config.tier_endpoints(decision.tier):
            other = "cluster" if decision.tier == "edge" else "edge"
            return Decision(other, f"no_{decision.tier}_endpoint", decision.prompt_tokens)
        return decision

    async def complete(
        self, request: ChatRequest, request_id: str, deadline: float | None = None, allow_degrade: bool = False
    ) -> Routed:
        """Answer a request: attempts go to the tier's endpoints chosen by :class:`Pool`, with
        backoff between retries of the same endpoint, until one gives a usable answer.

        Args:
            request: the validated request.
            request_id: the request's id (logged, and sent upstream).
            deadline: seconds this request may take to get an answer (default: the config's
                ``deadline``); under Lambda, the invocation's time left.
            allow_degrade: the request allows the edge to answer when the cluster cannot
                (``auto`` requests also when the config's ``allow_degrade`` is on).

        Raises:
            ModelNotFound: see :meth:`decide`.
            InvalidRequest: the request is over the chosen tier's ``limits``.
            OpenAIError: an upstream's 400/413/422, relayed with its message and status.
            Overloaded: every endpoint is busy (429/503) or open; 503 with ``Retry-After``.
            RateLimited: the upstreams asked for a wait longer than the time left; 429 with
                ``Retry-After``.
            UpstreamTimeout: every attempt timed out, or the deadline passed.
            UpstreamError: no endpoint gave a usable answer.
        """
        decision = self.decide(request)
        check_tier_limits(request, self.config.limits.for_tier(decision.tier), decision.tier)
        logger.info(
            "route decided",
            extra={
                "request_id": request_id,
                "upstream_request_id": upstream_request_id(request_id),
                "tier": decision.tier,
                "reason": decision.reason,
                "prompt_tokens_estimate": decision.prompt_tokens,
                "stream": request.stream,
            },
        )
        deadline_at = self.clock() + (self.config.deadline if deadline is None else deadline)
        if request.model == "auto" and decision.tier == "edge" and self.config.tier_endpoints("cluster"):
            return await self._cascade(request, decision, request_id, deadline_at)
        degrade = allow_degrade or (request.model == "auto" and self.config.allow_degrade)
        first = _RetryLoop(self, request, decision, request_id, deadline_at)
        try:
            return await self._answer(first)
        except (Overloaded, RateLimited, UpstreamError, UpstreamTimeout) as exc:
            if not (degrade and decision.tier == "cluster" and self.config.tier_endpoints("edge")):
                raise
            if self.clock() >= deadline_at:
                raise
            edge = Decision("edge", f"degraded:{exc.code}", decision.prompt_tokens)
            self.metrics.fallback("edge", "degrade")
            logger.warning(
                "cluster cannot answer; degrading to the edge", extra={"request_id": request_id, "error": exc.message}
            )
            return await self._answer(
                _RetryLoop(self, request, edge, request_id, deadline_at, prior_attempts=first.total_attempts)
            )

    async def _cascade(self, request: ChatRequest, decision: Decision, request_id: str, deadline_at: float) -> Routed:
        """Edge first; the cluster when the edge cannot serve the prompt or is not confident
        enough (see the module docstring). Errors as :meth:`complete`."""
        cascade = self.config.cascade
        window = cascade.stream_window if request.stream and cascade.threshold is not None else 0
        edge = _RetryLoop(
            self,
            request,
            decision,
            request_id,
            deadline_at,
            min_confidence=cascade.threshold if window else None,
            attempts_per_endpoint=1,  # the cluster is the fallback: no backoff on a busy edge
        )
        edge.extra_headers = {"x-r1edge-confidence-window": str(window)} if window else {}
        kept: Routed | None = None
        try:
            routed = await self._answer(edge)
        except _LowConfidence as low:
            reason = f"low_confidence:{low.confidence:.4f}<{cascade.threshold:g}"
        except (Overloaded, RateLimited, UpstreamError, UpstreamTimeout) as exc:
            reason = f"edge_unavailable:{exc.code}"
        except OpenAIError as exc:
            if exc.code != "context_length_exceeded":
                raise
            reason = "edge_context_length"
        else:
            confidence = routed.confidence
            if routed.stream is not None or cascade.threshold is None or confidence is None:
                return routed
            if confidence >= cascade.threshold:
                return routed
            reason = f"low_confidence:{confidence:.4f}<{cascade.threshold:g}"
            kept = routed
        logger.info("escalating to the cluster", extra={"request_id": request_id, "reason": reason})
        escalated = Decision("cluster", reason, decision.prompt_tokens)
        self.metrics.fallback("cluster", "cascade")
        cluster = _RetryLoop(self, request, escalated, request_id, deadline_at, prior_attempts=edge.total_attempts)
        try:
            return await self._answer(cluster)
        except OpenAIError as exc:
            if kept is not None:  # the edge's complete answer beats any cluster error
                logger.warning(
                    "cluster cannot answer; keeping the edge's answer",
                    extra={"request_id": request_id, "error": exc.message},
                )
                kept.decision = Decision("edge", f"{reason};cluster_unavailable:{exc.code}", decision.prompt_tokens)
                kept.attempts = cluster.total_attempts
                return kept
            retryable = isinstance(exc, (Overloaded, RateLimited, UpstreamError, UpstreamTimeout))
            if not retryable or not reason.startswith("low_confidence") or self.clock() >= deadline_at:
                raise
            fallback = Decision("edge", f"{reason};cluster_unavailable:{exc.code}", decision.prompt_tokens)
            self.metrics.fallback("edge", "degrade")
            again = _RetryLoop(self, request, fallback, request_id, deadline_at, prior_attempts=cluster.total_attempts)
            return await self._answer(again)

    async def _answer(self, loop: _RetryLoop) -> Routed:
        await self.refresh_health()
        await self.refresh_load(loop.decision.tier)
        decision = loop.decision
        if loop.request.stream:
            return await self._stream(loop)
        while True:
            state, response = await loop.next_response()
            try:
                with anyio.fail_after(max(0.0, loop.deadline_at - self.clock())):
                    raw = await response.aread()
                completion = parse_completion(raw)
            except (ValueError, httpx.HTTPError, TimeoutError) as exc:
                loop.failed(
                    state,
                    f"unusable body: {type(exc).__name__}: {exc}",
                    timeout=isinstance(exc, (TimeoutError, httpx.TimeoutException)),
                )
                continue
            finally:
                await response.aclose()
                state.in_flight -= 1
            loop.succeeded(state)
            self.metrics.usage(decision.tier, state.endpoint.name, completion.get("usage"))
            return Routed(
                decision,
                state.endpoint,
                loop.total_attempts,
                completion=completion,
                upstream_headers=relayed_headers(response.headers),
            )

    async def _stream(self, loop: _RetryLoop) -> Routed:
        """Open a stream and hold the client's response until the first content chunk, so that a
        failure before any content falls back silently with accurate headers; if no content
        comes within ``keepalive_interval`` seconds, commit the response and keep waiting inside
        it, sending ``: keep-alive`` comments (see :meth:`_relay`)."""
        while True:
            state, response = await loop.next_response()
            confidence = _confidence(response.headers)
            if loop.min_confidence is not None and confidence is not None and confidence < loop.min_confidence:
                await response.aclose()
                state.in_flight -= 1
                loop.succeeded(state)
                raise _LowConfidence(confidence)
            upstream = _UpstreamStream(response)
            result = await upstream.first_content(
                min(self.config.keepalive_interval, loop.first_byte_left(state)), loop
            )
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
                stream=self._relay(loop, state, upstream, content_started=result == "content"),
                upstream_headers=relayed_headers(response.headers),
            )

    def _count_usage(self, loop: _RetryLoop, state: EndpointState, chunk: dict[str, Any]) -> None:
        """Token counts from a stream's usage chunk (``stream_options.include_usage``)."""
        if chunk.get("usage"):
            self.metrics.usage(loop.decision.tier, state.endpoint.name, chunk["usage"])

    async def _relay(
        self, loop: _RetryLoop, state: EndpointState, upstream: _UpstreamStream, content_started: bool
    ) -> AsyncIterator[bytes]:
        """The client's SSE stream. Before content: keep-alive comments, and silent fallback to
        the next endpoint on failure. After content: chunks as they arrive; a failure ends the
        stream with ``upstream_stream_truncated`` and no ``[DONE]`` (docs/ARCHITECTURE.md, Errors)."""
        current: _UpstreamStream | None = upstream
        try:
            while not content_started:
                left = loop.first_byte_left(state)
                result = await upstream.first_content(min(self.config.keepalive_interval, left), loop)
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
                    upstream = current = _UpstreamStream(response)
            finished = any(_finish_reason(c) for c in upstream.buffered)
            for chunk in upstream.buffered:
                self._count_usage(loop, state, chunk)
                yield sse_data(chunk)
            upstream.buffered.clear()
            idle = state.endpoint.timeouts.idle
            while True:
                left = loop.deadline_at - self.clock()
                kind, item = await upstream.get(min(idle, left))
                if kind == "chunk":
                    finished = finished or _finish_reason(item)
                    self._count_usage(loop, state, item)
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
                    state.breaker.record_failure(self.clock())
                    logger.warning(
                        "stream cut after content", extra={"endpoint": state.endpoint.name, "reason": reason}
                    )
                    yield truncated_event(reason)
                    return
        finally:
            if current is not None:
                await current.aclose()
                state.in_flight -= 1


KEEPALIVE = b": keep-alive\n\n"
#: Longest Retry-After (seconds) we pass on to a client: a day.
MAX_RETRY_AFTER = 86_400


class _UpstreamStream:
    """An upstream SSE response read by a background task into a queue, so waits can time out
    without breaking the stream (cancelling an ``__anext__`` mid-read would)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.buffered: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for chunk in iter_chunks(self.response):
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

    async def first_content(self, timeout: float, loop: _RetryLoop) -> str:
        """Buffer chunks until one carries content: ``"content"``; ``"waiting"`` when
        ``timeout`` passes first (the first-byte budget is not spent yet); ``"failed"`` when the
        stream failed or ended before content, or the first-byte budget ran out (recorded)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            kind, item = await self.get(left)
            if kind == "chunk":
                self.buffered.append(item)
                if has_content(item):
                    return "content"
                continue
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


def _finish_reason(chunk: dict[str, Any]) -> bool:
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


class _RetryLoop:
    """One request's retry state: attempts per endpoint, endpoints taken out, failure notes,
    and the deadline (monotonic seconds). ``prior_attempts`` counts the calls of an earlier loop
    for the same request (a cascade or a degrade), for ``x-r1edge-attempts``; ``min_confidence``
    makes a streamed edge answer under it raise :class:`_LowConfidence`; ``extra_headers`` go
    upstream with every attempt."""

    def __init__(
        self,
        gateway: Gateway,
        request: ChatRequest,
        decision: Decision,
        request_id: str,
        deadline_at: float,
        prior_attempts: int = 0,
        min_confidence: float | None = None,
        attempts_per_endpoint: int | None = None,
    ) -> None:
        self.gw = gateway
        self.max_attempts = attempts_per_endpoint or gateway.config.retry.max_attempts
        self.prior_attempts = prior_attempts
        self.min_confidence = min_confidence
        self.extra_headers: dict[str, str] = {}
        self.request = request
        self.decision = decision
        self.request_id = request_id
        self.deadline_at = deadline_at
        self.attempts = 0
        self.tried: dict[str, int] = {}
        self.excluded: set[str] = set()
        self.notes: list[str] = []
        self.retry_after: dict[str, float | None] = {}
        self.statuses: list[int] = []
        self.timeouts = 0
        self.forced_probe_used = False
        self.current: EndpointState
        self.started_at: dict[str, float] = {}
        self.budget = self.max_attempts * max(1, len(gateway.config.tier_endpoints(decision.tier)))

    @property
    def total_attempts(self) -> int:
        """Upstream calls for this request so far, earlier loops included."""
        return self.prior_attempts + self.attempts

    def headers(self, endpoint: str | None = None) -> dict[str, str]:
        return route_headers(self.decision, endpoint, self.total_attempts)

    def first_byte_left(self, state: EndpointState) -> float:
        started = self.started_at.get(state.endpoint.name, self.gw.clock())
        budget = started + state.endpoint.timeouts.first_byte
        return max(0.0, min(budget, self.deadline_at) - self.gw.clock())

    def failed(
        self,
        state: EndpointState,
        note: str,
        retry_after: float | None = None,
        timeout: bool = False,
        status: int | None = None,
    ) -> None:
        """Record a retryable failure of ``state``'s endpoint (breaker, notes, Retry-After)."""
        state.breaker.record_failure(self.gw.clock())
        self.notes.append(f"{state.endpoint.name}: {note}")
        self.retry_after[state.endpoint.name] = retry_after
        if status is not None:
            self.statuses.append(status)
        if timeout:
            self.timeouts += 1
        logger.info(
            "attempt failed",
            extra={
                "request_id": self.request_id,
                "endpoint": state.endpoint.name,
                "attempt": self.attempts,
                "reason": note,
            },
        )

    def succeeded(self, state: EndpointState) -> None:
        now = self.gw.clock()
        state.breaker.record_success(now)
        state.observe_ttfb(now - self.started_at.get(state.endpoint.name, now))

    def _give_up(self) -> OpenAIError:
        summary = "; ".join(self.notes) or "no endpoint available"
        headers = self.headers()
        now = self.gw.clock()
        asked = [ra for ra in self.retry_after.values() if ra is not None]
        busy = self.statuses and all(s in (429, 503) for s in self.statuses)
        cooldown = self.gw.pool.shortest_cooldown(self.decision.tier, now)
        logger.warning("no upstream answered", extra={"request_id": self.request_id, "failures": self.notes})
        if asked and busy:
            wait = max(1, math.ceil(min(min(asked), MAX_RETRY_AFTER)))
            status_cls = RateLimited if all(s == 429 for s in self.statuses) else Overloaded
            return status_cls(
                f"Every {self.decision.tier} endpoint is busy ({summary}).",
                headers={**headers, "Retry-After": str(wait)},
            )
        if self.timeouts and self.timeouts == len(self.notes):
            return UpstreamTimeout(f"Every {self.decision.tier} attempt timed out ({summary}).", headers=headers)
        if cooldown > 0 or busy:
            wait = max(1, math.ceil(cooldown))
            return Overloaded(
                f"Every {self.decision.tier} endpoint is failing ({summary}).",
                headers={**headers, "Retry-After": str(wait)},
            )
        return UpstreamError(f"No {self.decision.tier} endpoint gave a usable answer ({summary}).", headers=headers)

    async def next_response(self) -> tuple[EndpointState, httpx.Response]:
        """The next upstream response with status 200 (and SSE for streams), after whatever
        waits and failovers it takes. The caller owns the response and the in-flight count.

        Raises:
            OpenAIError: a relayed client fault, or the final error when nothing is left.
        """
        gw = self.gw
        while self.attempts < self.budget:
            now = gw.clock()
            if now >= self.deadline_at:
                raise UpstreamTimeout(
                    f"No answer within the deadline ({'; '.join(self.notes) or 'no attempt'}).", headers=self.headers()
                )
            state, forced = gw.pool.choose(
                self.decision.tier, now, self.tried, self.excluded, allow_forced_probe=not self.forced_probe_used
            )
            if state is None:
                if gw.pool.overloaded(self.decision.tier, self.excluded):
                    raise Overloaded(
                        f"Every {self.decision.tier} endpoint is at its load target or concurrency limit.",
                        headers={**self.headers(), "Retry-After": "1"},
                    )
                break
            self.forced_probe_used = self.forced_probe_used or forced
            name = state.endpoint.name
            if self.tried.get(name, 0) >= self.max_attempts:
                self.excluded.add(name)  # this endpoint has had its retries
                continue
            if self.tried.get(name):
                wait = wait_before_retry(
                    self.tried[name],
                    gw.config.retry.backoff_base,
                    gw.config.retry.backoff_cap,
                    self.retry_after.get(name),
                    gw.rng,
                )
                if now + wait >= self.deadline_at:
                    # Never sleep past the deadline: take this endpoint out and try another.
                    self.excluded.add(name)
                    self.notes.append(f"{name}: wait of {wait:.3g} s exceeds the time left")
                    continue
                await gw.sleep(wait)
            if self.tried.get(name):
                gw.metrics.retry(self.decision.tier, name)
            elif self.attempts:
                gw.metrics.fallback(self.decision.tier, "endpoint")
            self.attempts += 1
            self.tried[name] = self.tried.get(name, 0) + 1
            self.current = state
            self.started_at[name] = gw.clock()
            response = await self._attempt(state)
            if response is not None:
                return state, response
        raise self._give_up()

    async def _attempt(self, state: EndpointState) -> httpx.Response | None:
        """One attempt: the response when usable (in-flight counted), else ``None`` (recorded)."""
        endpoint = state.endpoint
        body = dict(upstream_body(self.request.body, self.gw.config.forward_fields), model=endpoint.upstream_model)
        time_left = max(0.001, self.deadline_at - self.gw.clock())
        try:
            with anyio.fail_after(min(time_left, endpoint.timeouts.first_byte + endpoint.timeouts.connect)):
                response = await self.gw.upstream.open_chat(
                    endpoint, body, upstream_request_id(self.request_id), self.extra_headers
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            self.failed(state, f"timeout before headers ({type(exc).__name__})", timeout=True)
            return None
        except httpx.TransportError as exc:
            self.failed(state, f"{type(exc).__name__}: {exc}")
            return None
        except UpstreamError as exc:
            logger.error("endpoint misconfigured", extra={"endpoint": endpoint.name, "error": exc.message})
            self.excluded.add(endpoint.name)
            self.notes.append(f"{endpoint.name}: {exc.message}")
            return None
        status = response.status_code
        outcome = classify_status(status)
        if outcome is Outcome.OK and status == 200:
            content_type = response.headers.get("content-type", "")
            if not self.request.stream or "text/event-stream" in content_type:
                state.in_flight += 1
                return response
            await response.aclose()
            self.failed(state, f"stream answered with content-type {content_type!r}")
            return None
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        if outcome is Outcome.CLIENT_FAULT:
            error = _upstream_client_error(raw, status)
            error.headers.update(self.headers(endpoint.name))
            raise error
        if outcome is Outcome.MISCONFIGURED:
            logger.error(
                "upstream refused our credentials or model mapping; endpoint taken out",
                extra={"endpoint": endpoint.name, "status": status, "model": endpoint.upstream_model},
            )
            self.excluded.add(endpoint.name)
            self.notes.append(f"{endpoint.name}: HTTP {status} (credential or model mapping)")
            return None
        retry_after = parse_retry_after(response.headers, self.gw.wall_clock())
        self.failed(state, f"HTTP {status}", retry_after=retry_after, status=status)
        return None
