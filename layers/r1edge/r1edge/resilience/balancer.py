"""Endpoint state and selection within a tier, pure (time passed in, no I/O).

Each endpoint has a :class:`~r1edge.resilience.breaker.CircuitBreaker`, a moving estimate (EWMA) of its
time to first byte, and an in-flight count. :meth:`Pool.choose` orders a tier's endpoints for
one attempt: endpoints already taken out for this request or whose breaker is open are skipped;
among the rest, those not yet tried in this request come first (failover before retrying the same
endpoint), then by priority, equal priorities sharing traffic by ``weight`` — except that when
the preferred endpoint's latency estimate passes the threshold (default 500 ms) and another
available endpoint is faster, traffic moves to the faster one, and moves back only once the
preferred one is below ``threshold * hysteresis`` (so it does not flap).
An open endpoint gets nothing until its cooldown has passed; then its breaker's one probe slot
admits a single attempt at a time, across every request sharing the pool (see
:mod:`r1edge.resilience.breaker`). When every endpoint is open, the one whose cooldown ended
first is probed, and :meth:`Pool.choose` refuses everyone else: the caller answers 503 with
:meth:`Pool.shortest_cooldown` as ``Retry-After``.

Active health checks (:mod:`r1edge.observe.health`) add to this: an endpoint a fresh health record marks
``down`` is skipped while another of its tier is usable, and a record's engine load counts
toward ``at_capacity`` when the router has no ``/metrics`` reading of its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from r1edge.resilience.breaker import BreakerSettings, CircuitBreaker, State


class Endpoint(Protocol):
    """What selection reads of an endpoint (:class:`r1edge.routing.config.Endpoint` has it all):
    its unique ``name``, its ``tier`` (``edge`` or ``cluster``), ``priority`` (lower first),
    ``weight`` (share among equal priorities) and ``max_concurrency`` (requests in flight;
    ``None``: unbounded)."""

    @property
    def name(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> float: ...
    @property
    def max_concurrency(self) -> int | None: ...


#: Weight of the newest sample in the time-to-first-byte EWMA.
EWMA_ALPHA = 0.2


@dataclass
class EndpointState:
    """Runtime state of one endpoint: breaker, TTFB estimate (seconds), in-flight requests."""

    endpoint: Endpoint
    breaker: CircuitBreaker
    ttfb: float | None = None
    in_flight: int = 0
    load: float | None = None  # engine load from /metrics, a fraction; None when unknown
    load_at: float | None = None  # monotonic seconds of the last scrape
    load_target: float = 1.0
    health: str | None = None  # from the health table: "up", "overloaded", "down"; None: no fresh record
    health_load: float | None = None  # engine load the health function read, a fraction
    health_completion_at: float | None = None  # epoch seconds of the last 1-token probe applied

    @property
    def down(self) -> bool:
        """Marked down by a fresh health-table record."""
        return self.health == "down"

    @property
    def effective_load(self) -> float | None:
        """The router's own ``/metrics`` reading when it has one, else the health table's."""
        return self.load if self.load is not None else self.health_load

    def observe_ttfb(self, seconds: float) -> None:
        self.ttfb = seconds if self.ttfb is None else (1 - EWMA_ALPHA) * self.ttfb + EWMA_ALPHA * seconds

    @property
    def at_capacity(self) -> bool:
        """At its concurrency limit, or its engine at or over the load target."""
        limit = self.endpoint.max_concurrency
        if limit is not None and self.in_flight >= limit:
            return True
        load = self.effective_load
        return load is not None and load >= self.load_target


@dataclass
class Pool:
    """All endpoints' states, and the latency-switch memory per tier.

    Args:
        endpoints: the routing config's endpoints.
        breaker: breaker thresholds for every endpoint (frozen, so shared by their breakers).
        latency_threshold: seconds of TTFB estimate above which traffic may move (0.5).
        hysteresis: fraction of the threshold the preferred endpoint must fall under before
            traffic moves back (0.8).
    """

    endpoints: Iterable[Endpoint]
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    latency_threshold: float = 0.5
    hysteresis: float = 0.8
    load_target: float = 0.7
    rng: random.Random = field(default_factory=random.Random)
    states: dict[str, EndpointState] = field(init=False)
    switched: dict[str, bool] = field(init=False, default_factory=dict)
    #: Called as ``on_breaker(endpoint_name, new_state)`` on every breaker transition (metrics).
    on_breaker: Callable[[str, State], None] | None = None

    def __post_init__(self) -> None:
        self.states = {
            e.name: EndpointState(e, CircuitBreaker(self.breaker), load_target=self.load_target) for e in self.endpoints
        }
        for name, state in self.states.items():
            self.watch(name, state)

    def watch(self, name: str, state: EndpointState) -> None:
        """Send ``state``'s breaker transitions to :attr:`on_breaker`."""
        if self.on_breaker is not None:
            report = self.on_breaker
            state.breaker.listener = lambda new, name=name: report(name, new)

    def __getitem__(self, name: str) -> EndpointState:
        return self.states[name]

    def tier(self, tier: str) -> list[EndpointState]:
        return sorted((s for s in self.states.values() if s.endpoint.tier == tier), key=lambda s: s.endpoint.priority)

    def _weighted(self, candidates: list[EndpointState]) -> list[EndpointState]:
        """Within each run of equal priority, a random order drawn by ``weight`` (sampling
        without replacement), so equal-priority endpoints share traffic in proportion."""
        out: list[EndpointState] = []
        i = 0
        while i < len(candidates):
            j = i
            while j < len(candidates) and candidates[j].endpoint.priority == candidates[i].endpoint.priority:
                j += 1
            group = candidates[i:j]
            while group:
                pick = self.rng.choices(group, weights=[s.endpoint.weight for s in group])[0]
                out.append(pick)
                group.remove(pick)
            i = j
        return out

    def _latency_order(self, tier: str, candidates: list[EndpointState]) -> list[EndpointState]:
        if len(candidates) < 2:
            return candidates
        preferred = candidates[0]
        others = [c for c in candidates[1:] if c.ttfb is not None]
        fastest = min(others, key=lambda c: c.ttfb or 0.0, default=None)
        slow = preferred.ttfb is not None and preferred.ttfb > self.latency_threshold
        recovered = preferred.ttfb is not None and preferred.ttfb < self.latency_threshold * self.hysteresis
        if self.switched.get(tier):
            if recovered or fastest is None:
                self.switched[tier] = False
        elif slow and fastest is not None and (fastest.ttfb or 0.0) < (preferred.ttfb or 0.0):
            self.switched[tier] = True
        if self.switched.get(tier) and fastest is not None:
            return [fastest] + [c for c in candidates if c is not fastest]
        return candidates

    def choose(
        self,
        tier: str,
        now: float,
        tried: dict[str, int],
        excluded: set[str],
        probe_lease: Callable[[EndpointState], float] | None = None,
    ) -> tuple[EndpointState | None, bool]:
        """The endpoint for the next attempt (``None`` when none may be tried now), and whether
        the attempt holds that endpoint's half-open probe slot (``state.breaker.probe``, taken
        by this call: the caller must :meth:`~r1edge.resilience.breaker.Probe.release` it when
        the attempt ends, however it ends).

        Args:
            tier: ``edge`` or ``cluster``.
            now: monotonic seconds, for breaker cooldowns and probe leases.
            tried: attempts so far in this request, by endpoint name.
            excluded: endpoints taken out for this request (misconfigured, or a wait too long).
            probe_lease: seconds a probe granted to an endpoint may stay out (the longest its
                attempt can take); ``None``: until released.
        """
        usable = [s for s in self.tier(tier) if s.endpoint.name not in excluded and not s.at_capacity]
        if not usable:
            return None, False
        # Endpoints the health table marks down come last: they get an attempt only when no
        # other endpoint's breaker admits one, since the table may lag a recovery.
        up = [s for s in usable if not s.down]
        down = [s for s in usable if s.down]
        ordered = self._latency_order(tier, self._weighted(up or down)) + (self._weighted(down) if up else [])
        if all(s.breaker.state is not State.CLOSED for s in ordered):
            # Every one is open or probing: the one whose cooldown ended first is probed first.
            ordered.sort(key=lambda s: s.breaker.opened_at + s.breaker.settings.cooldown)
        ordered.sort(key=lambda s: tried.get(s.endpoint.name, 0))  # stable: failover first
        for state in ordered:
            probing = state.breaker.state is not State.CLOSED
            if state.breaker.allow(now, math.inf if probe_lease is None else probe_lease(state)):
                return state, probing
        return None, False

    def overloaded(self, tier: str, excluded: set[str]) -> bool:
        """Whether every endpoint of the tier not taken out is at capacity."""
        usable = [s for s in self.tier(tier) if s.endpoint.name not in excluded]
        return bool(usable) and all(s.at_capacity for s in usable)

    def shortest_cooldown(self, tier: str, now: float) -> float:
        """Seconds until the first blocked breaker of the tier may let an attempt through (0 if
        none is blocked): over the open breakers (their cooldown left) and the half-open ones
        with a probe out (its lease left), the least (see
        :meth:`~r1edge.resilience.breaker.CircuitBreaker.blocked_for`; ``math.inf`` when the
        only ones are probes without a lease)."""
        return min(
            (
                s.breaker.blocked_for(now)
                for s in self.tier(tier)
                if s.breaker.state is State.OPEN
                or (s.breaker.state is State.HALF_OPEN and s.breaker.probe_out(now) is not None)
            ),
            default=0.0,
        )
