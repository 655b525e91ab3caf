"""Active signals merged into the endpoints' states before a tier is tried: engine load from
``/metrics`` and the health table's records.

Both only inform :meth:`Pool.choose <r1edge.resilience.balancer.Pool.choose>`: a load at or over
``load.target`` makes an endpoint at capacity, a fresh ``down`` record skips it while another of
its tier is usable. Each refresh reports the endpoint's health and load gauges through the
:class:`~r1edge.routing.ports.GatewayMetrics` port.
"""

from __future__ import annotations

import asyncio

from r1edge.resilience.balancer import EndpointState, Pool
from r1edge.resilience.load import parse_engine_load
from r1edge.routing.ports import GatewayMetrics, HealthRecord, HealthSource
from r1edge.routing.upstream import Upstream


def report(metrics: GatewayMetrics, state: EndpointState) -> None:
    """The endpoint's health (``None``: no fresh record) and load (a fraction) gauges, as the
    router sees them now."""
    up = None if state.health is None else state.health != "down"
    metrics.endpoint_health(state.endpoint.name, state.endpoint.tier, up, state.effective_load)


async def refresh_load(
    pool: Pool, upstream: Upstream, metrics: GatewayMetrics, tier: str, now: float, max_age: float
) -> None:
    """Re-read ``/metrics`` of the tier's endpoints that have ``metrics: true`` and whose last
    reading is older than ``max_age`` seconds (``now``: monotonic seconds). A text with no engine
    metrics, or none at all, makes the load unknown (``None``), which never blocks traffic."""
    stale = [s for s in pool.tier(tier) if s.endpoint.metrics and (s.load_at is None or now - s.load_at > max_age)]
    if not stale:
        return
    texts = await asyncio.gather(*(upstream.scrape_metrics(s.endpoint) for s in stale))
    for state, text in zip(stale, texts, strict=True):
        engine = parse_engine_load(text) if text else None
        state.load, state.load_at = (engine.load if engine else None), now
        report(metrics, state)


def apply_health(state: EndpointState, record: HealthRecord | None) -> None:
    """Merge one endpoint's fresh health record (``None``: none fresh, so passive signals only)
    into its state: status and engine load; a new successful 1-token completion probe is one
    more time-to-first-byte sample (seconds) for the latency estimate."""
    if record is None:
        state.health, state.health_load = None, None
        return
    state.health, state.health_load = record.status, record.load
    if (
        record.completion_ok
        and record.completion_latency is not None
        and record.completion_at != state.health_completion_at
    ):
        state.observe_ttfb(record.completion_latency)
        state.health_completion_at = record.completion_at


async def refresh_health(pool: Pool, view: HealthSource | None, metrics: GatewayMetrics) -> None:
    """Re-read the health table when its view is due (older than ``health.max_age``) and merge
    its fresh records (no older than ``health.stale_after``) into every endpoint's state
    (:func:`apply_health`); ``view`` ``None``: nothing to merge."""
    if view is None:
        return
    await view.refresh_if_due()
    fresh = view.fresh()
    for name, state in pool.states.items():
        apply_health(state, fresh.get(name))
        report(metrics, state)
