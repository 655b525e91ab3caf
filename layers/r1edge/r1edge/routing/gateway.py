"""The router's core, as one facade: pick a tier, answer from it, fall back between tiers.

``Gateway.complete`` takes a validated request and returns a :class:`~r1edge.routing.routed.Routed`
answer (a JSON completion, or an SSE byte stream), or raises an
:class:`~r1edge.protocol.errors.OpenAIError`. The work is done by the modules beside this one:

- :mod:`~r1edge.routing.decide` — the tier decision (model name, classifier) and which
  fallbacks between tiers a request may take;
- :mod:`~r1edge.routing.cascade` — the edge→cluster cascade of ``auto`` and the cluster→edge
  degrade;
- :mod:`~r1edge.routing.answer` — one tier's answer: a JSON completion, or a stream
  (:mod:`~r1edge.routing.streaming`: holding for content, keep-alive, truncation);
- :mod:`~r1edge.routing.attempts` — the one retry loop (attempt, failover, backoff);
- :mod:`~r1edge.routing.signals` — the health table and ``/metrics`` load merged into the
  endpoints' states.

The rules are in those modules' docstrings and docs/ARCHITECTURE.md (Retry rules, Contracts, Errors).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from aws_lambda_powertools import Logger

from r1edge.protocol.validation import ChatRequest
from r1edge.resilience.balancer import Pool
from r1edge.routing import signals
from r1edge.routing.attempts import upstream_request_id
from r1edge.routing.cascade import answer_or_degrade, cascade
from r1edge.routing.classifier import Decision
from r1edge.routing.config import RoutingConfig, check_tier_limits
from r1edge.routing.decide import cascades, decide, may_degrade
from r1edge.routing.ports import GatewayMetrics, HealthSource
from r1edge.routing.routed import Routed
from r1edge.routing.upstream import Upstream

__all__ = ["Gateway", "Routed"]

logger = Logger(service="r1edge-router", child=True)


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
            config.breaker,
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
        reading is older than ``load.max_age`` seconds (see :func:`r1edge.routing.signals.refresh_load`)."""
        await signals.refresh_load(self.pool, self.upstream, self.metrics, tier, self.clock(), self.config.load.max_age)

    async def refresh_health(self) -> None:
        """Merge the health table into the endpoints' states (re-read when older than
        ``health.max_age``): a fresh record sets the endpoint's health status (``down`` is
        skipped by :meth:`Pool.choose <r1edge.resilience.balancer.Pool.choose>`) and its engine load (used
        when the router reads no ``/metrics`` itself); each new 1-token completion probe is one
        more time-to-first-byte sample for the latency estimate. Records older than
        ``health.stale_after`` are ignored: the endpoint is back to passive signals only
        (see :func:`r1edge.routing.signals.refresh_health`)."""
        await signals.refresh_health(self.pool, self.health, self.metrics)

    def decide(self, request: ChatRequest) -> Decision:
        """Map the requested model to a tier: ``auto`` classifies; ``edge`` and ``deepseek-r1``
        force a tier (see :func:`r1edge.routing.decide.decide`).

        Raises:
            ModelNotFound: an unknown model name, or a forced tier with no endpoint configured.
        """
        return decide(request, self.config)

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
        if cascades(request, decision, self.config):
            return await cascade(self, request, decision, request_id, deadline_at)
        degrade = may_degrade(request, self.config, allow_degrade)
        return await answer_or_degrade(self, request, decision, request_id, deadline_at, degrade)
