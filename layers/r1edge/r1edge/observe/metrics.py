"""One place that records every r1edge metric once and feeds two sinks:

- **CloudWatch** through Powertools Metrics (Embedded Metric Format, one JSON line per dimension
  set on stdout, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics). One
  namespace (``POWERTOOLS_METRICS_NAMESPACE``, default ``r1edge``); every metric carries the
  ``service`` dimension (``router``, ``health``, ``edge``, ``config``) plus at most four of its own
  (CloudWatch allows 30 per metric; Powertools enforces 29). Events are buffered and written by
  :meth:`Recorder.flush`: the router flushes after every request (it is a long-running ASGI app
  under the Lambda Web Adapter, so Powertools' ``@log_metrics`` decorator has no handler to wrap;
  Powertools documents ``flush_metrics()`` for that case), the scheduled functions at the end
  of each invocation. ``POWERTOOLS_METRICS_DISABLED=true`` turns EMF off (Powertools' switch).
- **Prometheus** through prometheus-client, served as text at the router's ``GET /metrics``;
  names are prefixed ``r1edge_``, times in seconds, counters end in ``_total``.

Events and their names (Prometheus; EMF, unit and dimensions besides ``service``):

- :meth:`Recorder.request`: ``r1edge_requests_total{route,tier,endpoint,status}`` and
  ``r1edge_request_duration_seconds{route,tier,endpoint}``; ``Requests`` (Count) and
  ``RequestLatency`` (Milliseconds), dimensions ``route``, ``tier``, ``endpoint``, ``status``.
- :meth:`Recorder.first_token`: ``r1edge_time_to_first_token_seconds{tier,endpoint}``;
  ``TimeToFirstToken`` (Milliseconds).
- :meth:`Recorder.retry`: ``r1edge_retries_total{tier,endpoint}``; ``Retries``.
- :meth:`Recorder.fallback`: ``r1edge_fallbacks_total{tier,kind}``; ``Fallbacks``.
- :meth:`Recorder.breaker`: ``r1edge_breaker_transitions_total{endpoint,state}``;
  ``BreakerTransitions``.
- :meth:`Recorder.tokens`: ``r1edge_prompt_tokens_total`` and
  ``r1edge_completion_tokens_total{tier,endpoint}``; ``PromptTokens``, ``CompletionTokens``.
- :meth:`Recorder.model_load`: ``r1edge_model_load_seconds{model,phase}``; ``ModelImportTime``
  and ``ModelLoadTime`` (Milliseconds), dimension ``model``.
- :meth:`Recorder.probe`: ``r1edge_health_probes_total{endpoint,status}`` and
  ``r1edge_health_probe_duration_seconds{endpoint}``; ``HealthProbes``, ``HealthProbeLatency``
  (Milliseconds), ``EngineLoad`` (a fraction), and ``HealthProbeFailures`` with ``service`` only.
- :meth:`Recorder.endpoint_health`: ``r1edge_endpoint_up{endpoint,tier}`` and
  ``r1edge_endpoint_load{endpoint,tier}`` (Prometheus only: the router's view of the table).
- :meth:`Recorder.cache_lookup`: ``r1edge_cache_lookups_total{result}``; ``CacheLookups``.
- :meth:`Recorder.job_outcome`: ``r1edge_jobs_total{status}``; ``JobOutcomes``.
- :meth:`Recorder.queue_depth`: ``r1edge_queue_depth``; ``QueueDepth``.

Label values: ``route`` is the HTTP route template (``/v1/chat/completions``); ``tier`` is how the
answer was served, as in ``x-r1edge-route`` (``edge``, ``cluster``, ``cache``, ``queue``; ``none``
when no tier answered); ``endpoint`` is ``x-r1edge-upstream`` (``none`` when none answered);
``status`` is the HTTP status code, or ``499`` (nginx's "client closed request",
:data:`r1edge.protocol.web.CLIENT_CLOSED_REQUEST`) when the client went away before an answer
started: the app answered 499, or answered nothing (or failed) after ``receive`` reported
``http.disconnect``. A ``500`` is an answer that never started while the client was still there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r1edge import env
from r1edge.headers import CONTENT_TYPE, X_CACHE, X_R1EDGE_ROUTE, X_R1EDGE_UPSTREAM
from r1edge.protocol.web import CLIENT_CLOSED_REQUEST

#: Default CloudWatch namespace (``POWERTOOLS_METRICS_NAMESPACE`` overrides it).
DEFAULT_NAMESPACE = "r1edge"
#: Label value for "no tier / no endpoint answered".
NONE = "none"
#: Histogram buckets for latency and time to first token, seconds (10 ms to 5 min).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Content type of :meth:`Recorder.prometheus_text` (the classic text format, which every
#: Prometheus version scrapes).
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Cache lookup results accepted by :meth:`Recorder.cache_lookup` (the response cache's ``x-cache``, lower case).
CACHE_RESULTS = ("hit", "miss", "stale", "bypass", "error")


class Recorder:
    """Records each event once, into a Prometheus registry and an EMF buffer.

    Args:
        service: the ``service`` dimension (``router``, ``health``, ``edge``, ``config``).
        namespace: CloudWatch namespace (default ``POWERTOOLS_METRICS_NAMESPACE`` or ``r1edge``).
        registry: Prometheus registry (default: a new one per recorder, so two apps in one
            process, as in the tests, never share counters).

    Thread-safe: the EMF buffer is guarded by a lock (the health prober and the router may record
    from worker threads).
    """

    def __init__(self, service: str, namespace: str | None = None, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.namespace = namespace or os.environ.get(env.POWERTOOLS_METRICS_NAMESPACE) or DEFAULT_NAMESPACE
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[tuple[str, str], ...], str, str, float]] = []
        r = self.registry
        self.requests = Counter(
            "r1edge_requests", "Requests answered", ["route", "tier", "endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "r1edge_request_duration_seconds",
            "Time from request to the last byte of the answer, seconds",
            ["route", "tier", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "r1edge_time_to_first_token_seconds",
            "Time from request to the first content chunk of a streamed answer, seconds",
            ["tier", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "r1edge_retries", "Attempts repeated on an endpoint already tried", ["tier", "endpoint"], registry=r
        )
        self.fallbacks = Counter(
            "r1edge_fallbacks", "Moves to another endpoint or tier after a failure", ["tier", "kind"], registry=r
        )
        self.breaker_transitions = Counter(
            "r1edge_breaker_transitions", "Circuit breaker state changes", ["endpoint", "state"], registry=r
        )
        self.prompt_tokens = Counter(
            "r1edge_prompt_tokens", "Prompt tokens (upstream usage)", ["tier", "endpoint"], registry=r
        )
        self.completion_tokens = Counter(
            "r1edge_completion_tokens", "Completion tokens (upstream usage)", ["tier", "endpoint"], registry=r
        )
        self.model_load_seconds = Gauge(
            "r1edge_model_load_seconds",
            "Edge model cold start: import and load time, seconds",
            ["model", "phase"],
            registry=r,
        )
        self.probes = Counter("r1edge_health_probes", "Health probe results", ["endpoint", "status"], registry=r)
        self.probe_seconds = Histogram(
            "r1edge_health_probe_duration_seconds",
            "Health probe time (cheap check), seconds",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.endpoint_up = Gauge(
            "r1edge_endpoint_up",
            "1 when the health table says up or overloaded, 0 down",
            ["endpoint", "tier"],
            registry=r,
        )
        self.endpoint_load = Gauge(
            "r1edge_endpoint_load", "Engine load (fraction; 1.0 when requests wait)", ["endpoint", "tier"], registry=r
        )
        self.cache_lookups = Counter("r1edge_cache_lookups", "Response cache lookups", ["result"], registry=r)
        self.jobs = Counter("r1edge_jobs", "Queued job outcomes", ["status"], registry=r)
        self.queue_depth_gauge = Gauge("r1edge_queue_depth", "Jobs waiting in the queue", registry=r)

    # -- EMF buffer -----------------------------------------------------------------------------

    def _emf(self, name: str, unit: str, value: float, **dimensions: str) -> None:
        key = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        with self._lock:
            self._pending.append((key, name, unit, float(value)))

    def flush(self) -> int:
        """Write the buffered events as EMF, one JSON line per dimension set (Powertools'
        ``AmazonCloudWatchEMFProvider.flush_metrics``), and return how many events were written.
        Values of the same metric within a set become one EMF value array (Powertools starts a
        new line after 100, the EMF limit)."""
        with self._lock:
            pending, self._pending = self._pending, []
        groups: dict[tuple[tuple[str, str], ...], list[tuple[str, str, float]]] = {}
        for key, name, unit, value in pending:
            groups.setdefault(key, []).append((name, unit, value))
        for key, events in groups.items():
            provider = AmazonCloudWatchEMFProvider(
                metric_set={}, dimension_set={}, metadata_set={}, namespace=self.namespace, service=self.service
            )
            for dim, value in key:
                provider.add_dimension(name=dim, value=value)
            for name, unit, value in events:
                provider.add_metric(name=name, unit=unit, value=value)
            provider.flush_metrics(raise_on_empty_metrics=False)
        return len(pending)

    def prometheus_text(self) -> bytes:
        """The registry in Prometheus text exposition format (:data:`PROMETHEUS_CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    # -- events ---------------------------------------------------------------------------------

    def request(self, route: str, tier: str, endpoint: str, status: int, seconds: float) -> None:
        """One answered request: its route template, the tier and endpoint that answered
        (:data:`NONE` when none did), the HTTP status and the time to its last byte (seconds)."""
        self.requests.labels(route, tier, endpoint, str(status)).inc()
        self.request_seconds.labels(route, tier, endpoint).observe(seconds)
        dims = {"route": route, "tier": tier, "endpoint": endpoint, "status": str(status)}
        self._emf("Requests", MetricUnit.Count, 1, **dims)
        self._emf("RequestLatency", MetricUnit.Milliseconds, seconds * 1000, **dims)

    def first_token(self, tier: str, endpoint: str, seconds: float) -> None:
        """Time to first token of a streamed answer: request start to the first content chunk
        sent to the client (SSE comments do not count), seconds."""
        self.ttft_seconds.labels(tier, endpoint).observe(seconds)
        self._emf("TimeToFirstToken", MetricUnit.Milliseconds, seconds * 1000, tier=tier, endpoint=endpoint)

    def retry(self, tier: str, endpoint: str) -> None:
        """An attempt repeated on an endpoint already tried in the same request (after backoff)."""
        self.retries.labels(tier, endpoint).inc()
        self._emf("Retries", MetricUnit.Count, 1, tier=tier, endpoint=endpoint)

    def fallback(self, tier: str, kind: str) -> None:
        """A move after a failure or refusal: ``kind`` is ``endpoint`` (failover to another
        endpoint of the tier), ``cascade`` (edge → cluster) or ``degrade`` (cluster → edge);
        ``tier`` is the tier moved to."""
        self.fallbacks.labels(tier, kind).inc()
        self._emf("Fallbacks", MetricUnit.Count, 1, tier=tier, kind=kind)

    def breaker(self, endpoint: str, state: str) -> None:
        """A circuit breaker entered ``state`` (``closed``, ``open``, ``half_open``)."""
        self.breaker_transitions.labels(endpoint, state).inc()
        self._emf("BreakerTransitions", MetricUnit.Count, 1, endpoint=endpoint, state=state)

    def tokens(self, tier: str, endpoint: str, prompt: int | None, completion: int | None) -> None:
        """Token counts of one answer, from the upstream's ``usage`` (absent counts are skipped)."""
        if prompt:
            self.prompt_tokens.labels(tier, endpoint).inc(prompt)
            self._emf("PromptTokens", MetricUnit.Count, prompt, tier=tier, endpoint=endpoint)
        if completion:
            self.completion_tokens.labels(tier, endpoint).inc(completion)
            self._emf("CompletionTokens", MetricUnit.Count, completion, tier=tier, endpoint=endpoint)

    def usage(self, tier: str, endpoint: str, usage: Any) -> None:
        """:meth:`tokens` from an OpenAI ``usage`` object (ignored unless it is a mapping)."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.tokens(
                tier,
                endpoint,
                prompt if isinstance(prompt, int) else None,
                completion if isinstance(completion, int) else None,
            )

    def model_load(self, model: str, import_seconds: float, load_seconds: float) -> None:
        """The edge's cold start: seconds to import llama.cpp and to load the model
        (EMF ``ModelImportTime``/``ModelLoadTime`` in milliseconds, dimension ``model``)."""
        self.model_load_seconds.labels(model, "import").set(import_seconds)
        self.model_load_seconds.labels(model, "load").set(load_seconds)
        self._emf("ModelImportTime", MetricUnit.Milliseconds, import_seconds * 1000, model=model)
        self._emf("ModelLoadTime", MetricUnit.Milliseconds, load_seconds * 1000, model=model)

    def probe(self, endpoint: str, status: str, seconds: float | None, load: float | None) -> None:
        """One health probe of an endpoint: ``status`` ``up``, ``overloaded`` or ``down``, the
        cheap check's time (seconds; ``None`` when it failed) and the engine load (fraction).
        A ``down`` result also counts in ``HealthProbeFailures`` with only the ``service``
        dimension, which the CloudWatch alarm watches."""
        self.probes.labels(endpoint, status).inc()
        self._emf("HealthProbes", MetricUnit.Count, 1, endpoint=endpoint, status=status)
        if seconds is not None:
            self.probe_seconds.labels(endpoint).observe(seconds)
            self._emf("HealthProbeLatency", MetricUnit.Milliseconds, seconds * 1000, endpoint=endpoint)
        if load is not None:
            self._emf("EngineLoad", MetricUnit.NoUnit, load, endpoint=endpoint)
        if status == "down":
            self._emf("HealthProbeFailures", MetricUnit.Count, 1)

    def endpoint_health(self, endpoint: str, tier: str, up: bool | None, load: float | None) -> None:
        """The router's current view of an endpoint from the health table (Prometheus gauges
        only; ``None`` values remove the series: no fresh record)."""
        if up is None:
            _remove(self.endpoint_up, endpoint, tier)
        else:
            self.endpoint_up.labels(endpoint, tier).set(1 if up else 0)
        if load is None:
            _remove(self.endpoint_load, endpoint, tier)
        else:
            self.endpoint_load.labels(endpoint, tier).set(load)

    def cache_lookup(self, result: str) -> None:
        """A response cache lookup: ``result`` is one of :data:`CACHE_RESULTS`
        (``hit``, ``miss``, ...). Call it once per lookup, in the router."""
        self.cache_lookups.labels(result).inc()
        self._emf("CacheLookups", MetricUnit.Count, 1, result=result)

    def job_outcome(self, status: str) -> None:
        """A queued job's attempt ended: ``status`` is ``succeeded``, ``failed`` (permanent),
        ``dead_lettered`` (failed on its last receive), ``retried`` (left for redelivery) or
        ``poison`` (not a job message), as :class:`r1edge.jobs.runner.JobRunner` records them."""
        self.jobs.labels(status).inc()
        self._emf("JobOutcomes", MetricUnit.Count, 1, status=status)

    def queue_depth(self, n: int) -> None:
        """Jobs waiting in the queue (SQS ``ApproximateNumberOfMessages``), a gauge."""
        self.queue_depth_gauge.set(n)
        self._emf("QueueDepth", MetricUnit.Count, n)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # no such series yet
        gauge.remove(*labels)


_defaults: dict[str, Recorder] = {}
_defaults_lock = threading.Lock()


def default(service: str) -> Recorder:
    """The process-wide recorder of a service (created on first use), for functions that have no
    app object to hold one (the health, worker and config functions)."""
    with _defaults_lock:
        if service not in _defaults:
            _defaults[service] = Recorder(service)
        return _defaults[service]


#: Paths whose requests are not counted (operational endpoints scraped or polled all day).
UNCOUNTED_PATHS = frozenset({"/metrics", "/ping"})


class MetricsMiddleware:
    """ASGI middleware: records :meth:`Recorder.request` for every answered request (and
    :meth:`Recorder.first_token` for SSE answers) from what the client receives — the status,
    ``x-r1edge-route``/``x-r1edge-upstream`` headers, the first body chunk that completes an SSE
    event with data (read by :class:`~r1edge.protocol.sse.SSEDecoder`, so comments such as
    ``: keep-alive`` never count), the last byte — then flushes the EMF buffer (one batch per
    request). Paths in :data:`UNCOUNTED_PATHS` are passed through. A request with no answer
    started counts as ``499`` when its client had left (``receive`` gave ``http.disconnect``),
    else ``500``.

    Args:
        app: the wrapped ASGI app.
        recorder: where to record.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, app: ASGIApp, recorder: Recorder, clock: Any = time.monotonic) -> None:
        self.app = app
        self.recorder = recorder
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        started = self.clock()
        seen: dict[str, Any] = {"status": None, "tier": NONE, "endpoint": NONE, "events": None, "first": None}
        left = False

        async def watch() -> Message:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return message

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = _headers(message.get("headers", []))
                seen["tier"] = headers.get(X_R1EDGE_ROUTE, NONE)
                seen["endpoint"] = headers.get(X_R1EDGE_UPSTREAM, NONE)
                if headers.get(CONTENT_TYPE.lower(), "").startswith("text/event-stream"):
                    # lazy: the codec module imports httpx, which the config function (a
                    # recorder without this middleware) need not load at a cold start
                    from r1edge.protocol.sse import SSEDecoder

                    seen["events"] = SSEDecoder()
                seen["cache"] = headers.get(X_CACHE)
            elif (
                message["type"] == "http.response.body"
                and seen["events"] is not None
                and seen["first"] is None
                and seen["events"].feed(message.get("body", b""))
            ):
                seen["first"] = self.clock()
            await send(message)

        try:
            await self.app(scope, watch, observe)
        finally:
            if seen["status"] is None:  # no answer started: the client left, or the app failed
                seen["status"] = CLIENT_CLOSED_REQUEST if left else 500
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            ended = self.clock()
            self.recorder.request(path, seen["tier"], seen["endpoint"], seen["status"], ended - started)
            if seen.get("cache"):  # the response cache's x-cache: HIT, MISS or BYPASS
                self.recorder.cache_lookup(seen["cache"].lower())
            if seen["first"] is not None and 200 <= seen["status"] < 300:
                self.recorder.first_token(seen["tier"], seen["endpoint"], seen["first"] - started)
            self.recorder.flush()


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
