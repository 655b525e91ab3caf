"""The routing core's ports: what the :class:`~r1edge.routing.gateway.Gateway` needs from the
layers above it, as ``Protocol`` classes, so routing imports neither metrics nor the health table.

The real implementations live in :mod:`r1edge.observe` (:class:`~r1edge.observe.metrics.Recorder`,
:class:`~r1edge.observe.health.HealthView`) and are wired in by :mod:`r1edge.apps`; tests pass
fakes or the real ones. See docs/ARCHITECTURE.md, "Ports".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class GatewayMetrics(Protocol):
    """Where the gateway's metrics go (implemented by :class:`r1edge.observe.metrics.Recorder`)."""

    def retry(self, tier: str, endpoint: str) -> None:
        """One more attempt after a retryable failure on ``endpoint``."""

    def fallback(self, tier: str, kind: str) -> None:
        """A fallback of ``kind`` (``endpoint``, ``cascade``, ``degrade``) from ``tier``."""

    def breaker(self, endpoint: str, state: str) -> None:
        """A breaker transition to ``state`` (``closed``, ``open``, ``half_open``)."""

    def usage(self, tier: str, endpoint: str, usage: Mapping[str, Any] | None) -> None:
        """The OpenAI ``usage`` object of one answer (tokens)."""

    def endpoint_health(self, endpoint: str, tier: str, up: bool | None, load: float | None) -> None:
        """The endpoint's health (``None``: unknown) and engine load (a fraction) as routed."""


class HealthRecord(Protocol):
    """One endpoint's latest active health check (:class:`r1edge.observe.health.ProbeResult`)."""

    status: str  # "up", "overloaded" or "down"
    load: float | None  # engine load, a fraction
    completion_ok: bool
    completion_latency: float | None  # seconds
    completion_at: float | None  # epoch seconds


class HealthSource(Protocol):
    """The health table as the gateway reads it (:class:`r1edge.observe.health.HealthView`)."""

    max_age: float  # seconds between re-reads
    stale_after: float  # seconds after which a record is ignored

    async def refresh_if_due(self) -> None:
        """Re-read the table when the last read is older than ``max_age``."""

    def fresh(self) -> Mapping[str, HealthRecord]:
        """Records no older than ``stale_after``, by endpoint name."""
