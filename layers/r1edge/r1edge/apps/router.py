"""The router as an ASGI app: OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models``,
plus ``/health`` (200 once every endpoint answers), ``/ping`` (200 as soon as the app is up:
the Lambda Web Adapter's readiness check) and ``/metrics`` (Prometheus text, no API key).

Served by uvicorn locally and by the Lambda Web Adapter in AWS (docs/ARCHITECTURE.md, "Streaming in
Lambda"). The routing config is read at startup from ``R1EDGE_CONFIG`` (a file path or
``s3://bucket/key``) unless one is passed in.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from aws_lambda_powertools import Logger
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from r1edge import env
from r1edge.access import charging
from r1edge.access.guard import Guard, log_content_enabled
from r1edge.access.middleware import ApiKeyMiddleware
from r1edge.aws.lambda_context import in_lambda, request_deadline
from r1edge.cache.response import Answer, ResponseCache
from r1edge.dialects import anthropic, legacy, responses
from r1edge.dialects.pipeline import ChatPipeline
from r1edge.headers import CACHE_CONTROL, X_AMZN_LAMBDA_CONTEXT, X_R1EDGE_ALLOW_DEGRADE
from r1edge.jobs import api as jobsapi
from r1edge.jobs.service import JobService
from r1edge.observe.health import HealthView, view_from_env
from r1edge.observe.metrics import PROMETHEUS_CONTENT_TYPE, MetricsMiddleware, Recorder
from r1edge.protocol import web
from r1edge.protocol.errors import Overloaded, RateLimited
from r1edge.protocol.sse import SSE_HEADERS
from r1edge.protocol.validation import ChatRequest, parse_json_body, validate_chat_request
from r1edge.routing.config import RoutingConfig, config_from_env
from r1edge.routing.gateway import Gateway
from r1edge.routing.reload import ConfigReloader
from r1edge.routing.upstream import Upstream

#: The router's logger: the parent of the ``r1edge-router`` child loggers in the gateway and the
#: config reloader (Powertools child loggers write through their parent, which must exist).
logger = Logger(service="r1edge-router")


def create_app(
    config: RoutingConfig | None = None,
    upstream: Upstream | None = None,
    wall_clock: Callable[[], float] = time.time,
    reloader: ConfigReloader | None = None,
    extra_routes: list[BaseRoute] | None = None,
    recorder: Recorder | None = None,
    health: HealthView | None = None,
    guard: Guard | None = None,
    cache: ResponseCache | None = None,
    jobs: JobService | None = None,
    **gateway_options: Any,
) -> Starlette:
    """Build the router app.

    Args:
        config: the routing config; default: :func:`config_from_env` at startup, or, when
            ``R1EDGE_CONFIG`` is ``s3://…``, a :class:`~r1edge.routing.reload.ConfigReloader` that
            re-reads it every ``R1EDGE_CONFIG_MAX_AGE`` seconds (default 60).
        reloader: a config reloader to use instead (tests inject one).
        extra_routes: more routes, matched first (the local stack adds ``/v1/configs/*``).
        cache: the response cache; default: :meth:`ResponseCache.from_env` at startup (L1 in
            ``R1EDGE_CACHE_DIR`` or a fresh temporary directory), closed at shutdown.
        jobs: the jobs service behind ``/v1/jobs`` and ``Prefer: respond-async``; default: built
            from the environment at startup (:func:`r1edge.jobs.api.service_from_env`), or none.
        upstream: the HTTP transport; default: a new pooled :class:`~r1edge.routing.upstream.Upstream`,
            closed at shutdown.
        wall_clock: seconds since the epoch, for the Lambda deadline (injected in tests).
        recorder: where metrics go (default: a new :class:`~r1edge.observe.metrics.Recorder` for
            ``router``); served at ``/metrics`` and flushed as EMF after every request.
        health: the health table's view; default: the table named by ``R1EDGE_HEALTH_TABLE``,
            if set (:func:`r1edge.observe.health.view_from_env`).
        guard: API keys, per-key limits and usage records (:mod:`r1edge.access.middleware`); default:
            :meth:`~r1edge.access.guard.Guard.from_env`, which is ``None`` (no keys, tenant
            ``anonymous``) unless ``R1EDGE_KEYS_TABLE`` is set.
        gateway_options: passed to :class:`~r1edge.routing.gateway.Gateway` (``clock``, ``sleep``,
            ``rng``; tests inject them so no wait is real).
    """

    metrics = recorder or Recorder("router")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_upstream = upstream is None
        live = reloader
        source = os.environ.get(env.R1EDGE_CONFIG, "")
        if config is None and live is None and source.startswith("s3://"):
            max_age = float(os.environ.get(env.R1EDGE_CONFIG_MAX_AGE, "60"))
            live = await anyio.to_thread.run_sync(lambda: ConfigReloader(source, max_age, dict(os.environ)))
        app.state.reloader = live
        initial = config or (live.config if live is not None else config_from_env())
        view = health if health is not None else view_from_env(initial, os.environ)
        app.state.gateway = Gateway(
            initial, upstream or Upstream(), wall_clock=wall_clock, recorder=metrics, health=view, **gateway_options
        )
        app.state.created = int(time.time())
        own_cache = cache is None
        app.state.cache = cache or ResponseCache.from_env(initial.cache, wall_clock=wall_clock)
        app.state.jobs = jobs if jobs is not None else jobsapi.service_from_env()
        try:
            yield
        finally:
            if own_upstream:
                await app.state.gateway.upstream.aclose()
            if own_cache:
                app.state.cache.close()

    async def current(request: Request) -> Gateway:
        """The gateway, reconfigured first when a reloaded routing config changed."""
        gateway: Gateway = request.app.state.gateway
        live: ConfigReloader | None = request.app.state.reloader
        if live is not None and live.due:
            latest = await anyio.to_thread.run_sync(live.refresh)
            if latest is not gateway.config:
                gateway.reconfigure(latest)
        return gateway

    async def answer(request: Request, chat: ChatRequest) -> Answer | Response:
        """The routed answer to a validated chat request, as every dialect gets it: the key's
        token bucket charged, the deadline from the Lambda context, the response cache (and its
        coalescing) around the gateway. A ready :class:`Response` instead when the client left
        while waiting (499) or the request was queued (``Prefer: respond-async``, 202).

        Raises:
            OpenAIError: refused input, limits, or the gateway's final error.
        """
        gateway = await current(request)
        context = request.headers.get(X_AMZN_LAMBDA_CONTEXT) if in_lambda(os.environ) else None
        deadline = request_deadline(context, gateway.config.deadline, wall_clock())
        degrade = request.headers.get(X_R1EDGE_ALLOW_DEGRADE, "").strip().lower() in ("1", "true", "yes")
        classifier = gateway.config.classifier
        budget = chat.max_tokens or classifier.default_completion_tokens
        await charging.admit_chat(request, chat.messages, budget, classifier, chat.body.get("n"))
        cache: ResponseCache = request.app.state.cache
        rid, tenant, cache_control = web.request_id(), web.tenant(request), request.headers.get(CACHE_CONTROL)
        try:
            if chat.stream:  # Starlette closes a stream (and so the upstream) when the client goes
                return await cache.complete(gateway, chat, tenant, cache_control, rid, deadline, degrade)
            try:
                return await web.unless_disconnected(
                    request, lambda: cache.complete(gateway, chat, tenant, cache_control, rid, deadline, degrade)
                )
            except web.ClientDisconnected:
                return Response(status_code=web.CLIENT_CLOSED_REQUEST)
        except (Overloaded, RateLimited):
            queued = await jobsapi.respond_async(request, chat.body)  # Prefer: respond-async (RFC 7240)
            if queued is None:
                raise
            return queued

    async def chat_completions(request: Request) -> Response:
        gateway = await current(request)
        raw = await web.read_body(request, gateway.config.max_body_bytes)
        chat = validate_chat_request(parse_json_body(raw, gateway.config.max_json_depth))
        routed = await answer(request, chat)
        if isinstance(routed, Response):
            return routed
        if routed.stream is not None:
            return web.ClosingStreamingResponse(
                routed.stream, media_type="text/event-stream", headers={**routed.headers(), **SSE_HEADERS}
            )
        return JSONResponse(routed.completion, headers=routed.headers())

    async def models(request: Request) -> Response:
        gateway = await current(request)
        created = request.app.state.created
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "r1edge"}
            for name in gateway.config.served_models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def health_check(request: Request) -> Response:
        gateway = await current(request)
        results = await gateway.upstream.probe_all(gateway.config.endpoints)
        ok = all(r == "ok" for r in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "endpoints": results}, status_code=200 if ok else 503
        )

    async def prometheus(request: Request) -> Response:
        return Response(metrics.prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE)

    active_guard = guard if guard is not None else Guard.from_env()
    # Outermost first: request ids, then metrics (so 401s and 429s are counted), then API keys.
    middleware = [*web.middleware(), Middleware(MetricsMiddleware, recorder=metrics)]
    log_content = log_content_enabled()
    if active_guard is not None or log_content:
        middleware.append(Middleware(ApiKeyMiddleware, guard=active_guard, log_content=log_content))
    app = Starlette(
        routes=[
            *(extra_routes or []),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            *jobsapi.routes(),
            *legacy.routes(),
            *anthropic.routes(),
            *responses.routes(),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health_check, methods=["GET"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers=web.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.pipeline = ChatPipeline(current, answer)
    app.router.redirect_slashes = False  # an unknown path is a 404 in the OpenAI shape, not a 307
    return app
