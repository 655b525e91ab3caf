"""Circuit breaker per endpoint, pure: state changes happen only through calls, time only through
the ``now`` argument (seconds, monotonic).

Closed: calls flow; it opens after ``failure_threshold`` consecutive failures, or when the error
ratio over the last ``window`` seconds reaches ``error_ratio`` with at least ``min_calls`` calls.
Open: no call goes through until ``cooldown`` seconds have passed. Half-open: the breaker's one
probe slot (:class:`Probe`) lets a single attempt through at a time; its success closes the
breaker, its failure opens it again for another cooldown, and an attempt that ends with neither
(cancelled, abandoned, a client fault) gives the slot back. (The pattern as in Nygard, "Release
It!", and resilience4j's count/time-based windows; one call in half-open state is resilience4j's
``permittedNumberOfCallsInHalfOpenState`` set to 1, its default being 10.) The lease is what
resilience4j issue #903, "CircuitBreaker stuck in half open", lacked: a call that never
completes holds its half-open permit forever.

The slot is per breaker, so per endpoint and process-wide: one router process shares its
breakers between all of its concurrent requests (docs/ARCHITECTURE.md, Retry rules). A probe
carries a lease — the monotonic time by which its attempt must have ended; a probe still out
then is deemed lost and its slot freed, so no exit path that never runs can wedge the breaker.

:class:`BreakerSettings` is also the routing config's ``breaker`` section
(:class:`r1edge.routing.config.RoutingConfig`), validated by pydantic like the rest of it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerSettings(BaseModel):
    """Breaker thresholds, one set for every endpoint (the routing config's ``breaker``).

    Frozen, so one instance is shared by all breakers; unknown fields are refused, so a typo is
    an error that names the field.

    Attributes:
        failure_threshold: consecutive failures that open the breaker (count, >= 1; default 5).
        error_ratio: failed share of the calls in ``window`` that opens it (in (0, 1]; 0.5).
        min_calls: calls in ``window`` before ``error_ratio`` applies (count, >= 1; 20).
        window: seconds of calls the ratio looks back over (> 0; 60).
        cooldown: seconds an open breaker refuses calls before a probe (>= 0; 30).

    Raises:
        pydantic.ValidationError: a value out of range, or an unknown field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(5, ge=1)
    error_ratio: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(20, ge=1)
    window: float = Field(60.0, gt=0)
    cooldown: float = Field(30.0, ge=0)


@dataclass(eq=False)
class Probe:
    """The half-open probe slot of one breaker, as held by the one attempt it was granted to.

    Attributes:
        breaker: the breaker whose slot this is.
        number: which probe of that breaker (1, 2, ...): a late :meth:`release` of an earlier
            probe never frees a later one's slot.
        until: monotonic seconds by which the probe's attempt must have ended (its lease;
            ``math.inf``: no lease). After it the breaker deems the probe lost and frees its slot.
    """

    breaker: CircuitBreaker = field(repr=False)
    number: int
    until: float = math.inf

    def renew(self, until: float) -> None:
        """Move the lease to ``until`` (monotonic seconds), e.g. when the attempt starts after a
        backoff wait."""
        self.until = until

    def release(self) -> None:
        """Give the slot back (idempotent; a no-op once another probe holds it)."""
        self.breaker.release_probe(self)


@dataclass
class CircuitBreaker:
    """One endpoint's breaker. Call :meth:`allow` before an attempt and exactly one of
    :meth:`record_success` / :meth:`record_failure` after it (client faults are neither).

    Callers whose attempts overlap (the router's requests) keep the :class:`Probe` that
    :meth:`allow` put in :attr:`probe` when it admitted their attempt as the probe, record
    outcomes with :meth:`record` (naming that probe, or ``None``), and release the probe on
    every other way out of the attempt (:meth:`Probe.release`)."""

    settings: BreakerSettings = field(default_factory=BreakerSettings)
    state: State = State.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    #: The probe out now, if any; kept across state changes until released or its lease ends.
    probe: Probe | None = None
    probes: int = 0  # probes granted so far (each probe's number)
    calls: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, failed)
    #: Called with the new state on every change (metrics: breaker transitions); not part of
    #: the breaker's logic.
    listener: Callable[[State], None] | None = field(default=None, compare=False, repr=False)

    def _enter(self, state: State) -> None:
        changed = state is not self.state
        self.state = state
        if changed and self.listener is not None:
            self.listener(state)

    def _trim(self, now: float) -> None:
        while self.calls and self.calls[0][0] < now - self.settings.window:
            self.calls.popleft()

    def cooldown_remaining(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.settings.cooldown - now)

    def probe_out(self, now: float) -> Probe | None:
        """The probe out at ``now`` (monotonic seconds), if any; one past its lease is dropped."""
        if self.probe is not None and now >= self.probe.until:
            self.probe = None
        return self.probe

    def blocked_for(self, now: float) -> float:
        """Seconds until this breaker may let an attempt through (0: now): the cooldown left
        when open, else the lease left of the probe out (``math.inf`` for a probe without a
        lease), whichever is longer; 0 when closed."""
        if self.state is State.CLOSED:
            return 0.0
        probe = self.probe_out(now)
        lease = probe.until - now if probe is not None else 0.0
        return max(self.cooldown_remaining(now), lease)

    def allow(self, now: float, lease: float = math.inf) -> bool:
        """Whether an attempt may go out now (``now`` in monotonic seconds). Closed: yes. Open:
        no until the cooldown has passed, then it moves to half-open. Half-open: yes only while
        the probe slot is free; the attempt then holds it as :attr:`probe`, for at most
        ``lease`` seconds (see :class:`Probe`)."""
        if self.state is State.OPEN and self.cooldown_remaining(now) == 0.0:
            self._enter(State.HALF_OPEN)
        if self.state is State.CLOSED:
            return True
        if self.state is State.HALF_OPEN and self.probe_out(now) is None:
            self.probes += 1
            self.probe = Probe(self, self.probes, now + lease)
            return True
        return False

    def release_probe(self, probe: Probe) -> None:
        """Free the slot ``probe`` holds, if it still holds it. The state stays as it is: a
        half-open breaker lets the next attempt probe."""
        if self.probe is probe:
            self.probe = None

    def record(self, now: float, failed: bool, probe: Probe | None) -> None:
        """The outcome of one attempt at ``now`` (monotonic seconds), for callers that run
        attempts concurrently. ``probe`` is the probe slot the attempt held, freed here; ``None``
        for an attempt admitted while the breaker was closed, whose late outcome still counts
        but leaves another attempt's probe slot held.

        A success closes the breaker. A failure opens a half-open breaker again for a new
        cooldown, and a closed one on the thresholds (:class:`BreakerSettings`)."""
        self.calls.append((now, failed))
        self._trim(now)
        if probe is not None:
            self.release_probe(probe)
        if not failed:
            self.consecutive_failures = 0
            self._enter(State.CLOSED)
            return
        self.consecutive_failures += 1
        if self.state is State.HALF_OPEN:
            self._open(now)
            return
        failures = sum(1 for _, f in self.calls if f)
        ratio_trips = (
            len(self.calls) >= self.settings.min_calls and failures / len(self.calls) >= self.settings.error_ratio
        )
        if self.consecutive_failures >= self.settings.failure_threshold or ratio_trips:
            self._open(now)

    def record_success(self, now: float) -> None:
        """A usable answer at ``now`` (monotonic seconds), from the attempt :meth:`allow` admitted
        last (a single caller's protocol: it frees the probe slot, if one is out); see :meth:`record`."""
        self.record(now, False, self.probe)

    def record_failure(self, now: float) -> None:
        """A failure at ``now`` (monotonic seconds), from the attempt :meth:`allow` admitted
        last (a single caller's protocol: it frees the probe slot, if one is out); see :meth:`record`."""
        self.record(now, True, self.probe)

    def _open(self, now: float) -> None:
        self._enter(State.OPEN)
        self.opened_at = now
        self.calls.clear()
