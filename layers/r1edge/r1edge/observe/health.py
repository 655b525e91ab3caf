"""Active health checks: probe every endpoint of the routing config, keep the results in a
health table, and let the router read them.

The brief asks for health checks every 30 s; EventBridge schedules run at most once a minute, so
the health function runs :func:`run_rounds` with two rounds 30 s apart (``health.interval``).
One probe of an endpoint (:meth:`Prober.probe`):

1. a cheap check: ``GET {url}/models`` (every OpenAI-compatible server has it; vLLM's and SGLang's
   ``/health`` are not under the API root, and public APIs have none), within ``health.timeout``;
2. the engine's load from its Prometheus ``/metrics`` where vLLM or SGLang serve one
   (:mod:`r1edge.resilience.load`: running and waiting requests, KV-cache use); other servers have none;
3. every ``health.completion_interval`` seconds (and every round after one failed), a 1-token
   chat completion, which proves the model itself answers; its time is a time-to-first-token
   sample the router adds to its latency estimate.

The result is ``down`` when a check fails, ``overloaded`` when the load is at or over
``load.target``, else ``up``. Records go to the health table (:class:`DynamoHealthStore`; one item
per endpoint, DynamoDB TTL on ``expires_at``). The router reads them through
:class:`HealthView`, cached ``health.max_age`` seconds, ignoring records older than
``health.stale_after`` seconds (three probe periods by default): stale data is not trusted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal
from typing import Any, Protocol

import anyio
import httpx
from aws_lambda_powertools import Logger

from r1edge import env
from r1edge.aws.clients import LazyClient
from r1edge.aws.ddb import Table
from r1edge.observe.metrics import Recorder
from r1edge.protocol.errors import ConfigError, UpstreamError
from r1edge.protocol.sse import parse_completion
from r1edge.resilience.load import parse_engine_load
from r1edge.routing.config import Endpoint, RoutingConfig, config_from_env
from r1edge.routing.upstream import Upstream

logger = Logger(service="r1edge-health", child=True)

#: Seconds a request waits for a health-table read before routing without it (the read goes on
#: in its thread and serves the next requests).
READ_WAIT = 0.5
#: botocore settings for the table: a slow DynamoDB must not hold requests or threads for long.
CLIENT_CONFIG = {"connect_timeout": 1, "read_timeout": 2, "retries": {"total_max_attempts": 2, "mode": "standard"}}
STATUSES = ("up", "overloaded", "down")


@dataclass(frozen=True)
class ProbeResult:
    """One endpoint's latest probe, as stored in the health table.

    Attributes:
        endpoint: the endpoint's name (the table's partition key).
        tier: ``edge`` or ``cluster``.
        status: ``up``, ``overloaded`` (load at or over ``load.target``) or ``down``.
        checked_at: when the probe ran, seconds since the epoch.
        latency: seconds the cheap check took (``None`` when it failed).
        load: engine load, a fraction (1.0 when requests wait); ``None`` when not reported.
        running, waiting: engine requests running and waiting (counts), when reported.
        kv_usage: KV-cache fraction in use, when reported.
        completion_at: when the last 1-token completion probe ran (epoch seconds), if ever.
        completion_latency: seconds that completion took (``None`` when it failed).
        completion_ok: whether it answered.
        detail: why the endpoint is down (``""`` otherwise).
    """

    endpoint: str
    tier: str
    status: str
    checked_at: float
    latency: float | None = None
    load: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    completion_at: float | None = None
    completion_latency: float | None = None
    completion_ok: bool | None = None
    detail: str = ""

    def to_item(self, ttl: float) -> dict[str, Any]:
        """A DynamoDB item (numbers as ``Decimal``; ``None`` left out) with ``expires_at`` =
        ``checked_at + ttl`` (epoch seconds, an integer, as DynamoDB TTL requires)."""
        item: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
                value = Decimal(str(round(float(value), 6)))
            item[key] = value
        item["expires_at"] = int(self.checked_at + ttl)
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ProbeResult:
        """The inverse of :meth:`to_item` (unknown attributes ignored)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in item:
                continue
            value = item[f.name]
            kwargs[f.name] = float(value) if isinstance(value, Decimal) else value
        return cls(**kwargs)


class HealthStore(Protocol):
    """Where probe results live (the health table)."""

    def put(self, result: ProbeResult, ttl: float) -> None:
        """Store ``result`` as its endpoint's latest record, expiring ``ttl`` seconds later."""

    def read_all(self) -> dict[str, ProbeResult]:
        """Every stored record, by endpoint name."""


class DynamoHealthStore:
    """The health table in DynamoDB: partition key ``endpoint`` (S), TTL attribute
    ``expires_at`` (the template's ``HealthTable``). Reached through
    :class:`r1edge.aws.ddb.Table` on one low-level client (:class:`r1edge.aws.clients.LazyClient`,
    :data:`CLIENT_CONFIG`) created on first use; its endpoint comes from
    ``AWS_ENDPOINT_URL_DYNAMODB`` when set (moto locally).

    Args:
        table_name: the table's name.
        client: a boto3 DynamoDB client to use instead (tests inject moto's).
    """

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self.table = Table(table_name, client or LazyClient("dynamodb", CLIENT_CONFIG))

    def put(self, result: ProbeResult, ttl: float) -> None:
        """``PutItem`` of the endpoint's record (the latest probe replaces the previous one).

        Raises:
            botocore.exceptions.ClientError: DynamoDB refused the write.
        """
        self.table.put_item(Item=result.to_item(ttl))

    def read_all(self) -> dict[str, ProbeResult]:
        """A ``Scan`` of the table (one small item per endpoint), following pagination.

        Raises:
            botocore.exceptions.ClientError: DynamoDB refused the read.
        """
        out: dict[str, ProbeResult] = {}
        kwargs: dict[str, Any] = {}
        while True:
            page = self.table.scan(**kwargs)
            for item in page.get("Items", []):
                result = ProbeResult.from_item(item)
                out[result.endpoint] = result
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class Prober:
    """Probes endpoints and writes the results.

    Args:
        config: the routing config (endpoints, ``health`` and ``load.target`` settings).
        upstream: the HTTP transport (the router's :class:`~r1edge.routing.upstream.Upstream`: the same
            auth, SigV4 and pooling).
        store: the health table.
        recorder: metrics (one ``probe`` event per endpoint per round).
        wall_clock: seconds since the epoch (``checked_at``).
        clock: monotonic seconds, to time the checks (injected in tests).
    """

    def __init__(
        self,
        config: RoutingConfig,
        upstream: Upstream,
        store: HealthStore,
        recorder: Recorder,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.store = store
        self.recorder = recorder
        self.wall_clock = wall_clock
        self.clock = clock

    def _completion_due(self, previous: ProbeResult | None, now: float) -> bool:
        interval = self.config.health.completion_interval
        if interval <= 0:
            return False
        if previous is None or previous.completion_at is None or previous.completion_ok is False:
            return True
        return now - previous.completion_at >= interval

    async def _completion(self, endpoint: Endpoint) -> tuple[float | None, str]:
        """A 1-token, non-streamed chat completion: ``(seconds, "")`` or ``(None, reason)``."""
        body = {
            "model": endpoint.upstream_model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "stream": False,
        }
        started = self.clock()
        try:
            with anyio.fail_after(self.config.health.completion_timeout):
                # a UUID request id: llama-cpp-python's server refuses any other with a 400
                response = await self.upstream.open_chat(endpoint, body, str(uuid.uuid4()))
                try:
                    raw = await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.HTTPError, UpstreamError) as exc:
            return None, f"completion: {type(exc).__name__}: {exc}"[:200]
        if response.status_code != 200:
            return None, f"completion: HTTP {response.status_code}"
        try:
            parse_completion(raw)
        except ValueError as exc:
            return None, f"completion: {exc}"[:200]
        return self.clock() - started, ""

    async def probe(self, endpoint: Endpoint, previous: ProbeResult | None = None) -> ProbeResult:
        """Probe one endpoint (cheap check, load, a completion when due) and return the result;
        never raises for an endpoint's failure (that is a ``down`` result)."""
        settings = self.config.health
        now = self.wall_clock()
        started = self.clock()
        answer = await self.upstream.probe(endpoint, timeout=settings.timeout)
        latency = self.clock() - started
        base = ProbeResult(endpoint.name, endpoint.tier, "up", now)
        if previous is not None:  # carry the last completion probe forward until the next one
            base = replace(
                base,
                completion_at=previous.completion_at,
                completion_latency=previous.completion_latency,
                completion_ok=previous.completion_ok,
            )
        if answer != "ok":
            return replace(base, status="down", detail=f"GET /models: {answer}")
        result = replace(base, latency=latency)
        text = await self.upstream.scrape_metrics(endpoint, timeout=settings.timeout)
        engine = parse_engine_load(text) if text else None
        if engine is not None:
            result = replace(
                result, load=engine.load, running=engine.running, waiting=engine.waiting, kv_usage=engine.kv_usage
            )
        if self._completion_due(previous, now):
            seconds, reason = await self._completion(endpoint)
            result = replace(result, completion_at=now, completion_latency=seconds, completion_ok=seconds is not None)
            if seconds is None:
                return replace(result, status="down", detail=reason)
        if result.load is not None and result.load >= self.config.load.target:
            result = replace(result, status="overloaded")
        return result

    async def run_round(self) -> list[ProbeResult]:
        """Probe every endpoint concurrently, store each result and record its metrics.
        A failed table read is treated as no previous records; a failed write is logged and the
        other endpoints' results are still written."""
        try:
            previous = await anyio.to_thread.run_sync(self.store.read_all)
        except Exception as exc:  # noqa: BLE001 - a read failure must not stop the probes
            logger.warning("cannot read the health table", extra={"error": str(exc)})
            previous = {}
        endpoints = self.config.endpoints
        results = await asyncio.gather(*(self.probe(e, previous.get(e.name)) for e in endpoints))
        for result in results:
            self.recorder.probe(result.endpoint, result.status, result.latency, result.load)
            try:
                await anyio.to_thread.run_sync(self.store.put, result, self.config.health.ttl)
            except Exception as exc:  # noqa: BLE001 - one failed write must not lose the others
                logger.error("cannot write the health table", extra={"endpoint": result.endpoint, "error": str(exc)})
            log = logger.warning if result.status == "down" else logger.info
            log("probed", extra={k: v for k, v in asdict(result).items() if v is not None})
        return list(results)


async def run_rounds(
    prober: Prober,
    rounds: int,
    interval: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[list[ProbeResult]]:
    """Run ``rounds`` probe rounds that start ``interval`` seconds apart (a slow round shortens
    the wait after it, never delays the schedule further); the metrics are flushed after each.

    Args:
        sleep: the wait between rounds (injected in tests, so none is real).
        clock: monotonic seconds, to keep the rounds on schedule.
    """
    out = []
    first = clock()
    for i in range(rounds):
        if i:
            await sleep(max(0.0, first + i * interval - clock()))
        out.append(await prober.run_round())
        prober.recorder.flush()
    return out


class HealthView:
    """The router's view of the health table: fresh records only, re-read at most every
    ``max_age`` seconds.

    Args:
        store: the health table.
        max_age: seconds a read is reused (``health.max_age``, default 5).
        stale_after: records whose ``checked_at`` is older than this many seconds are ignored
            (``health.stale_after``, default 90: three 30-second probe periods).
        wall_clock: seconds since the epoch.
    """

    def __init__(
        self,
        store: HealthStore,
        max_age: float = 5.0,
        stale_after: float = 90.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.stale_after = stale_after
        self.wall_clock = wall_clock
        self._records: dict[str, ProbeResult] = {}
        self._read_at: float | None = None
        self.reading = False

    @property
    def due(self) -> bool:
        """Whether the cached read is older than ``max_age`` (or there is none) and no read is
        in flight."""
        return not self.reading and (self._read_at is None or self.wall_clock() - self._read_at >= self.max_age)

    def refresh(self) -> None:
        """Re-read the table (blocking: the router calls it in a worker thread). A failed read
        keeps the previous records, which :meth:`fresh` lets age out."""
        self.reading = True
        try:
            self._records = self.store.read_all()
        except Exception as exc:  # noqa: BLE001 - health data is advisory: routing goes on without it
            logger.warning("cannot read the health table", extra={"error": str(exc)})
        finally:
            self._read_at = self.wall_clock()
            self.reading = False

    async def refresh_if_due(self, wait: float = READ_WAIT) -> None:
        """:meth:`refresh` in a worker thread when :attr:`due`, waiting at most ``wait`` seconds
        for it: a slower read finishes in its thread and serves later requests."""
        if not self.due:
            return
        self.reading = True
        with anyio.move_on_after(wait):
            await anyio.to_thread.run_sync(self.refresh, abandon_on_cancel=True)

    def fresh(self) -> dict[str, ProbeResult]:
        """Records no older than ``stale_after`` seconds, by endpoint name."""
        now = self.wall_clock()
        return {name: r for name, r in self._records.items() if now - r.checked_at <= self.stale_after}


def view_from_env(config: RoutingConfig, environ: Mapping[str, str]) -> HealthView | None:
    """A :class:`HealthView` on the table named by ``R1EDGE_HEALTH_TABLE``, or ``None`` when it
    is unset (no active health checks: the router relies on its passive signals)."""
    table = environ.get(env.R1EDGE_HEALTH_TABLE)
    if not table:
        return None
    return HealthView(DynamoHealthStore(table), config.health.max_age, config.health.stale_after)


async def run_from_env(
    environ: Mapping[str, str],
    recorder: Recorder,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rounds: int = 2,
    upstream: Upstream | None = None,
    store: HealthStore | None = None,
) -> list[list[ProbeResult]]:
    """What one scheduled run of the health function does: load the routing config
    (``R1EDGE_CONFIG``), then :func:`run_rounds` ``rounds`` times ``health.interval`` apart,
    writing to ``R1EDGE_HEALTH_TABLE``.

    Raises:
        ConfigError: ``R1EDGE_CONFIG`` or ``R1EDGE_HEALTH_TABLE`` is unset, or the config is
            invalid.
    """
    config = config_from_env(dict(environ))
    table = environ.get(env.R1EDGE_HEALTH_TABLE)
    if store is None and not table:
        raise ConfigError(f"{env.R1EDGE_HEALTH_TABLE} is not set: name the DynamoDB health table")
    own = upstream is None
    upstream = upstream or Upstream()
    try:
        prober = Prober(config, upstream, store or DynamoHealthStore(str(table)), recorder)
        return await run_rounds(prober, rounds, config.health.interval, sleep)
    finally:
        if own:
            await upstream.aclose()
