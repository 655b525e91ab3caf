"""Circuit breaker per endpoint, pure: state changes happen only through calls, time only through
the ``now`` argument (seconds, monotonic).

Closed: calls flow; it opens after ``failure_threshold`` consecutive failures, or when the error
ratio over the last ``window`` seconds reaches ``error_ratio`` with at least ``min_calls`` calls.
Open: calls are refused until ``cooldown`` seconds have passed. Half-open: one probe is let
through; its success closes the breaker, its failure opens it again for another cooldown. (The
pattern as in Nygard, "Release It!", and resilience4j's count/time-based windows.)

:class:`BreakerSettings` is also the routing config's ``breaker`` section
(:class:`r1edge.routing.config.RoutingConfig`), validated by pydantic like the rest of it.
"""

from __future__ import annotations

import enum
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


@dataclass
class CircuitBreaker:
    """One endpoint's breaker. Call :meth:`allow` before an attempt and exactly one of
    :meth:`record_success` / :meth:`record_failure` after it (client faults are neither)."""

    settings: BreakerSettings = field(default_factory=BreakerSettings)
    state: State = State.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
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

    def allow(self, now: float) -> bool:
        """Whether an attempt may go out now; moves open → half-open after the cooldown and then
        admits a single probe."""
        if self.state is State.OPEN and self.cooldown_remaining(now) == 0.0:
            self._enter(State.HALF_OPEN)
            self.probe_in_flight = False
        if self.state is State.CLOSED:
            return True
        if self.state is State.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def force_probe(self, now: float) -> None:
        """Let one probe through even though the cooldown has not ended (used when every
        endpoint of a tier is open: the one whose cooldown ends first is probed)."""
        self._enter(State.HALF_OPEN)
        self.probe_in_flight = True

    def record_success(self, now: float) -> None:
        self.calls.append((now, False))
        self._trim(now)
        self.consecutive_failures = 0
        self._enter(State.CLOSED)
        self.probe_in_flight = False

    def record_failure(self, now: float) -> None:
        self.calls.append((now, True))
        self._trim(now)
        self.consecutive_failures += 1
        if self.state is State.HALF_OPEN:
            self._open(now)
            return
        failed = sum(1 for _, f in self.calls if f)
        ratio_trips = (
            len(self.calls) >= self.settings.min_calls and failed / len(self.calls) >= self.settings.error_ratio
        )
        if self.consecutive_failures >= self.settings.failure_threshold or ratio_trips:
            self._open(now)

    def _open(self, now: float) -> None:
        self._enter(State.OPEN)
        self.opened_at = now
        self.probe_in_flight = False
        self.calls.clear()
