"""The one retry loop: one attempt, failover, backoff, and the error when nothing answers.

Rules (docs/ARCHITECTURE.md, Retry rules; "fallbacks wrap retries wrap one attempt"): each
attempt goes to the endpoint :class:`~r1edge.resilience.balancer.Pool` chooses — failover to an
endpoint not yet tried comes first and costs no wait; retrying an endpoint already tried waits a
full-jitter backoff with the upstream's ``Retry-After`` as a floor, and never past the deadline
(an endpoint whose wait would overrun it is taken out instead). Each endpoint may be tried
``retry.max_attempts`` times. Retryable: connection errors, timeouts before the first byte, 408,
429, 5xx (and, as the callers judge them, a body that is not a completion, a stream that is not
SSE or fails before content). 400/413/422 are relayed at once with the upstream's message and
leave the breaker alone. 401/403/404 take the endpoint out (logged loudly); with none left the
client gets 502, never a 401 that blames its key. Backends never retry by themselves.

Breakers (docs/ARCHITECTURE.md, Breaker and balancing): an open endpoint gets no attempt before
its cooldown ends; then an attempt may hold its breaker's one probe slot
(:class:`~r1edge.resilience.breaker.Probe`), shared by every request of the router process.
The loop holds at most one probe at a time and gives it back when that attempt ends —
recorded, cancelled, taken out, relayed as a client fault — and its callers
(:mod:`~r1edge.routing.answer`, :mod:`~r1edge.routing.streaming`) release it in ``finally``
when the response they own ends. A request that finds every endpoint of its tier open or
probing fails fast: 503 ``overloaded`` with ``Retry-After`` = the seconds until the first
cooldown ends or the first probe's attempt must have ended (at least 1).
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import httpx
from aws_lambda_powertools import Logger

from r1edge.headers import CONTENT_TYPE, RETRY_AFTER
from r1edge.protocol.errors import OpenAIError, Overloaded, RateLimited, UpstreamError, UpstreamTimeout
from r1edge.protocol.validation import ChatRequest, upstream_body
from r1edge.resilience.balancer import EndpointState, Pool
from r1edge.resilience.breaker import Probe
from r1edge.resilience.retry import Outcome, classify_status, parse_retry_after, wait_before_retry
from r1edge.routing.classifier import Decision
from r1edge.routing.config import RoutingConfig
from r1edge.routing.ports import GatewayMetrics
from r1edge.routing.routed import route_headers
from r1edge.routing.upstream import MAX_ERROR_BODY_BYTES, ResponseTooLarge, Upstream, read_limited
from r1edge.routing.upstream_errors import upstream_client_error

logger = Logger(service="r1edge-router", child=True)

#: Namespace for UUIDs derived from client request ids that are not UUIDs themselves.
REQUEST_ID_NAMESPACE = uuid.UUID("6f0d2b8e-3c1a-5b7e-9a40-2f6e1d9c8b71")
#: Longest Retry-After (seconds) we pass on to a client: a day.
MAX_RETRY_AFTER = 86_400
#: The errors a retry loop gives up with when its tier cannot answer (as opposed to a relayed
#: client fault): what a fallback to the other tier may follow.
UNAVAILABLE = (Overloaded, RateLimited, UpstreamError, UpstreamTimeout)


def upstream_request_id(request_id: str) -> str:
    """The ``x-request-id`` sent upstream: the client's id when it is a UUID, else a UUID derived
    from it (UUIDv5), since some OpenAI-compatible servers (llama-cpp-python's, through
    starlette-context) answer 400 to a request id that is not a UUID. Both are logged."""
    try:
        uuid.UUID(request_id)
    except ValueError:
        return str(uuid.uuid5(REQUEST_ID_NAMESPACE, request_id))
    return request_id


class Host(Protocol):
    """What a retry loop reads of its :class:`~r1edge.routing.gateway.Gateway`, at each use (so
    a :meth:`~r1edge.routing.gateway.Gateway.reconfigure` or a new ``upstream`` is seen by the
    next attempt)."""

    config: RoutingConfig
    pool: Pool
    upstream: Upstream
    metrics: GatewayMetrics
    rng: random.Random
    clock: Callable[[], float]  # monotonic seconds
    sleep: Callable[[float], Awaitable[None]]  # every backoff wait, seconds
    wall_clock: Callable[[], float]  # seconds since the epoch, for HTTP-date Retry-After


class RetryLoop:
    """One request's retry state for one tier: attempts per endpoint, endpoints taken out,
    failure notes, and the deadline (monotonic seconds).

    Args:
        host: the gateway (see :class:`Host`).
        request: the validated request.
        decision: the tier to try, and the reason (for the response headers).
        request_id: the request's id (logged; sent upstream as :func:`upstream_request_id`).
        deadline_at: monotonic seconds after which no attempt starts.
        prior_attempts: the calls of an earlier loop for the same request (a cascade or a
            degrade), counted in ``x-r1edge-attempts``.
        min_confidence: a streamed edge answer whose confidence header is under this raises
            :class:`~r1edge.routing.streaming.LowConfidence` (the cascade's stream window).
        attempts_per_endpoint: tries per endpoint (default ``retry.max_attempts``).

    ``extra_headers`` go upstream with every attempt.
    """

    def __init__(
        self,
        host: Host,
        request: ChatRequest,
        decision: Decision,
        request_id: str,
        deadline_at: float,
        prior_attempts: int = 0,
        min_confidence: float | None = None,
        attempts_per_endpoint: int | None = None,
    ) -> None:
        self.host = host
        self.max_attempts = attempts_per_endpoint or host.config.retry.max_attempts
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
        #: The probe slot this request's current attempt holds, if any (see :meth:`release_probe`).
        self.probe: Probe | None = None
        self.current: EndpointState
        self.started_at: dict[str, float] = {}
        self.budget = self.max_attempts * max(1, len(host.config.tier_endpoints(decision.tier)))

    @property
    def total_attempts(self) -> int:
        """Upstream calls for this request so far, earlier loops included."""
        return self.prior_attempts + self.attempts

    def headers(self, endpoint: str | None = None) -> dict[str, str]:
        """The route headers for an error or an answer now (:func:`~r1edge.routing.routed.route_headers`)."""
        return route_headers(self.decision, endpoint, self.total_attempts)

    def first_byte_left(self, state: EndpointState) -> float:
        """Seconds left of ``state``'s endpoint's first-byte timeout for the current attempt,
        never past the deadline."""
        started = self.started_at.get(state.endpoint.name, self.host.clock())
        budget = started + state.endpoint.timeouts.first_byte
        return max(0.0, min(budget, self.deadline_at) - self.host.clock())

    def probe_lease(self, state: EndpointState) -> float:
        """Seconds an attempt at ``state``'s endpoint may take before its outcome is known: the
        endpoint's connect and first-byte timeouts, never past the deadline. A probe granted
        to this request is out for at most this long (its lease)."""
        timeouts = state.endpoint.timeouts
        return max(0.0, min(timeouts.connect + timeouts.first_byte, self.deadline_at - self.host.clock()))

    def release_probe(self) -> None:
        """Give back the probe slot the current attempt holds, if any (idempotent). Called
        after the attempt's outcome is recorded, and on every other way out of the attempt."""
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.release()

    def failed(
        self,
        state: EndpointState,
        note: str,
        retry_after: float | None = None,
        timeout: bool = False,
        status: int | None = None,
    ) -> None:
        """Record a retryable failure of ``state``'s endpoint (breaker, notes, Retry-After in
        seconds, the HTTP status, whether it timed out)."""
        state.breaker.record(self.host.clock(), True, self.probe)
        self.release_probe()
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
        """Record a usable answer from ``state``'s endpoint (breaker, time-to-first-byte sample)."""
        now = self.host.clock()
        state.breaker.record(now, False, self.probe)
        self.release_probe()
        state.observe_ttfb(now - self.started_at.get(state.endpoint.name, now))

    def _give_up(self) -> OpenAIError:
        summary = "; ".join(self.notes) or "no endpoint available"
        headers = self.headers()
        now = self.host.clock()
        asked = [ra for ra in self.retry_after.values() if ra is not None]
        busy = self.statuses and all(s in (429, 503) for s in self.statuses)
        cooldown = self.host.pool.shortest_cooldown(self.decision.tier, now)
        logger.warning("no upstream answered", extra={"request_id": self.request_id, "failures": self.notes})
        if asked and busy:
            wait = max(1, math.ceil(min(min(asked), MAX_RETRY_AFTER)))
            status_cls = RateLimited if all(s == 429 for s in self.statuses) else Overloaded
            return status_cls(
                f"Every {self.decision.tier} endpoint is busy ({summary}).",
                headers={**headers, RETRY_AFTER: str(wait)},
            )
        if self.timeouts and self.timeouts == len(self.notes):
            return UpstreamTimeout(f"Every {self.decision.tier} attempt timed out ({summary}).", headers=headers)
        if not self.notes and cooldown > 0:  # nothing tried: every endpoint open or probing
            wait = max(1, math.ceil(min(cooldown, MAX_RETRY_AFTER)))
            return Overloaded(
                f"Every {self.decision.tier} endpoint's circuit breaker is open or has its one probe out; "
                f"retry in {wait} s.",
                headers={**headers, RETRY_AFTER: str(wait)},
            )
        if cooldown > 0 or busy:
            wait = max(1, math.ceil(min(cooldown, MAX_RETRY_AFTER)))
            return Overloaded(
                f"Every {self.decision.tier} endpoint is failing ({summary}).",
                headers={**headers, RETRY_AFTER: str(wait)},
            )
        return UpstreamError(f"No {self.decision.tier} endpoint gave a usable answer ({summary}).", headers=headers)

    async def next_response(self) -> tuple[EndpointState, httpx.Response]:
        """The next upstream response with status 200 (and SSE for streams), after whatever
        waits and failovers it takes. The caller owns the response and the in-flight count,
        and, when the attempt holds a probe slot (:attr:`probe`), the duty to record the
        outcome (:meth:`succeeded` / :meth:`failed`) or :meth:`release_probe` however it ends.

        Raises:
            OpenAIError: a relayed client fault, or the final error when nothing is left
                (one of :data:`UNAVAILABLE`: busy, failing, timed out, or no usable answer;
                503 ``overloaded`` at once when every endpoint of the tier is open or probing).
        """
        host = self.host
        self.release_probe()  # a caller that went on without recording gives it back here
        while self.attempts < self.budget:
            now = host.clock()
            if now >= self.deadline_at:
                raise UpstreamTimeout(
                    f"No answer within the deadline ({'; '.join(self.notes) or 'no attempt'}).", headers=self.headers()
                )
            state, probing = host.pool.choose(
                self.decision.tier, now, self.tried, self.excluded, probe_lease=self.probe_lease
            )
            if state is None:
                if host.pool.overloaded(self.decision.tier, self.excluded):
                    raise Overloaded(
                        f"Every {self.decision.tier} endpoint is at its load target or concurrency limit.",
                        headers={**self.headers(), RETRY_AFTER: "1"},
                    )
                break
            self.probe = state.breaker.probe if probing else None
            try:
                response = await self._wait_and_attempt(state, now)
            except BaseException:  # a client fault, or the request cancelled: the slot goes back
                self.release_probe()
                raise
            if response is not None:
                return state, response
            self.release_probe()  # skipped, taken out, or failed (recorded)
        raise self._give_up()

    async def _wait_and_attempt(self, state: EndpointState, now: float) -> httpx.Response | None:
        """Back off before a retry of ``state``'s endpoint (``now``: monotonic seconds when it
        was chosen), then make the attempt: the response when usable, else ``None`` (the
        endpoint had its retries, its wait would pass the deadline, or the attempt failed)."""
        host = self.host
        name = state.endpoint.name
        if self.tried.get(name, 0) >= self.max_attempts:
            self.excluded.add(name)  # this endpoint has had its retries
            return None
        if self.tried.get(name):
            wait = wait_before_retry(
                self.tried[name],
                host.config.retry.backoff_base,
                host.config.retry.backoff_cap,
                self.retry_after.get(name),
                host.rng,
            )
            if now + wait >= self.deadline_at:
                # Never sleep past the deadline: take this endpoint out and try another.
                self.excluded.add(name)
                self.notes.append(f"{name}: wait of {wait:.3g} s exceeds the time left")
                return None
            if self.probe is not None:  # the slot stays held through the wait, then the attempt
                self.probe.renew(min(now + wait + self.probe_lease(state), self.deadline_at))
            await host.sleep(wait)
            if self.probe is not None:  # the lease runs from the attempt's start
                self.probe.renew(host.clock() + self.probe_lease(state))
        if self.tried.get(name):
            host.metrics.retry(self.decision.tier, name)
        elif self.attempts:
            host.metrics.fallback(self.decision.tier, "endpoint")
        self.attempts += 1
        self.tried[name] = self.tried.get(name, 0) + 1
        self.current = state
        self.started_at[name] = host.clock()
        return await self._attempt(state)

    async def _attempt(self, state: EndpointState) -> httpx.Response | None:
        """One attempt: the response when usable (in-flight counted), else ``None`` (recorded)."""
        endpoint = state.endpoint
        body = dict(upstream_body(self.request.body, self.host.config.forward_fields), model=endpoint.upstream_model)
        time_left = max(0.001, self.deadline_at - self.host.clock())
        try:
            with anyio.fail_after(min(time_left, endpoint.timeouts.first_byte + endpoint.timeouts.connect)):
                response = await self.host.upstream.open_chat(
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
            content_type = response.headers.get(CONTENT_TYPE, "")
            if not self.request.stream or "text/event-stream" in content_type:
                state.in_flight += 1
                return response
            await response.aclose()
            self.failed(state, f"stream answered with content-type {content_type!r}")
            return None
        try:
            raw = await read_limited(response, MAX_ERROR_BODY_BYTES)
        except (httpx.HTTPError, ResponseTooLarge):
            raw = b""
        finally:
            await response.aclose()
        if outcome is Outcome.CLIENT_FAULT:
            error = upstream_client_error(raw, status)
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
        retry_after = parse_retry_after(response.headers, self.host.wall_clock())
        self.failed(state, f"HTTP {status}", retry_after=retry_after, status=status)
        return None
