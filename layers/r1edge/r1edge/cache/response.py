"""The exact response cache: answer a repeated request without any upstream call.

:class:`ResponseCache` wraps the gateway: it decides from the request (:mod:`r1edge.cache.key`)
whether to look up and store, tries L1 then L2 (:mod:`r1edge.cache.stores`; an L2 hit fills L1),
makes identical requests in flight wait for one upstream call (:mod:`r1edge.cache.coalesce`),
and records streamed answers as they pass (:mod:`r1edge.cache.replay`). A store writes both
levels. See docs/ARCHITECTURE.md, "Request path".

**Replay**: a stored answer goes back as JSON, or for ``stream: true`` as SSE chunks ending with
``data: [DONE]`` (:func:`~r1edge.cache.replay.replay_sse`). Headers say ``x-cache: HIT|MISS|
BYPASS``; a hit also says ``x-r1edge-route: cache`` and ``Age`` (seconds since stored, RFC 9111
§5.1); a coalesced answer says ``x-r1edge-reason: coalesced``.

A stream is stored only after its ``data: [DONE]``, and only when complete
(:func:`~r1edge.cache.key.complete_answer`); it is read with :func:`r1edge.protocol.sse.parse_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from r1edge import env
from r1edge.cache.coalesce import Coalescer, Settle
from r1edge.cache.key import BYPASS, HIT, MISS, Policy, cache_control, cache_key, cache_policy, complete_answer
from r1edge.cache.ports import CacheGateway, RoutedAnswer
from r1edge.cache.replay import StreamAssembler, replay_sse
from r1edge.cache.stores import DiskStore, DynamoStore, Entry, Store
from r1edge.headers import AGE, X_CACHE, X_R1EDGE_ATTEMPTS, X_R1EDGE_REASON, X_R1EDGE_ROUTE
from r1edge.protocol.sse import parse_events
from r1edge.protocol.validation import ChatRequest
from r1edge.routing.config import Cache

logger = Logger(service="r1edge-router", child=True)

#: Most bytes of a streamed answer the cache assembles to store (8 MiB, the default
#: ``max_response_bytes`` of a JSON answer): a longer stream is relayed whole but not stored, and
#: what was assembled is let go, so an endless cacheable stream holds no more than this.
MAX_ENTRY_BYTES = 8 * 1024 * 1024


@dataclass
class Answer:
    """What the router sends: a JSON ``completion`` or an SSE ``stream``, with headers.

    ``routed`` is the gateway's answer when an upstream answered (``None`` for a hit)."""

    completion: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    routed: RoutedAnswer | None = None

    @classmethod
    def of(cls, routed: RoutedAnswer, extra_headers: dict[str, str] | None = None) -> Answer:
        """The answer an upstream gave (:class:`~r1edge.cache.ports.RoutedAnswer`), with ``extra_headers``."""
        return cls(routed.completion, routed.stream, dict(extra_headers or {}), routed)

    def headers(self) -> dict[str, str]:
        """Response headers: the route headers of the upstream answer, or the cache's own."""
        base = self.routed.headers() if self.routed is not None else {}
        return {**base, **self.extra_headers}


class ResponseCache:
    """The response cache of one router process: L1, optional L2, and in-flight requests.

    Args:
        l1: the per-container store.
        l2: a factory ``table name -> Store`` for the shared store (default :class:`DynamoStore`);
            used when ``cache.l2`` is on.
        wall_clock: epoch seconds, for TTLs (injected in tests).
        cleanup: a directory to remove on :meth:`close` (the temporary L1 directory).
    """

    def __init__(
        self,
        l1: DiskStore,
        l2: Callable[[str], Store] = DynamoStore,
        wall_clock: Callable[[], float] = time.time,
        cleanup: str | None = None,
    ) -> None:
        self.l1 = l1
        self._l2_factory = l2
        self._l2: dict[str, Store] = {}
        self.wall_clock = wall_clock
        self.cleanup = cleanup
        self.coalescer = Coalescer()

    @property
    def flights(self) -> dict[str, asyncio.Future[dict[str, Any] | None]]:
        """The requests in flight, by key (:attr:`Coalescer.flights <r1edge.cache.coalesce.Coalescer.flights>`)."""
        return self.coalescer.flights

    @classmethod
    def from_env(
        cls,
        settings: Cache,
        environ: dict[str, str] | None = None,
        wall_clock: Callable[[], float] = time.time,
        l2: Callable[[str], Store] = DynamoStore,
    ) -> ResponseCache:
        """A cache whose L1 lives in ``R1EDGE_CACHE_DIR`` when set (kept across restarts), else in
        a fresh temporary directory removed by :meth:`close` (each run starts empty)."""
        environ = os.environ if environ is None else environ
        directory = environ.get(env.R1EDGE_CACHE_DIR)
        cleanup = None
        if not directory:
            directory = cleanup = tempfile.mkdtemp(prefix="r1edge-cache-")
        return cls(DiskStore(directory, settings.l1_size_limit, wall_clock), l2, wall_clock, cleanup)

    def l2(self, settings: Cache) -> Store | None:
        """The L2 store for ``settings`` (``None`` when ``l2`` is off)."""
        if not settings.l2:
            return None
        if settings.table not in self._l2:
            self._l2[settings.table] = self._l2_factory(settings.table)
        return self._l2[settings.table]

    def close(self) -> None:
        """Close L1 (and remove its directory when it was a temporary one)."""
        self.l1.close()
        if self.cleanup:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    async def lookup(self, key: str, settings: Cache) -> tuple[Entry, str] | None:
        """The live entry for ``key`` and the level that had it (``"l1"``/``"l2"``), or ``None``.
        An L2 hit fills L1 for the time the entry has left. Store failures count as misses."""
        now = self.wall_clock()
        try:
            entry = self.l1.get(key)
        except Exception as exc:  # noqa: BLE001 - a broken L1 must not fail the request
            logger.warning("L1 cache read failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            entry = None
        if entry is not None and entry.expires_at > now:
            return entry, "l1"
        shared = self.l2(settings)
        if shared is None:
            return None
        try:
            entry = await anyio.to_thread.run_sync(shared.get, key)
        except Exception as exc:  # noqa: BLE001 - DynamoDB errors (throttling, network) are misses
            logger.warning("L2 cache read failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None
        if entry is None or entry.expires_at <= now:
            return None
        try:
            self.l1.set(key, entry, "")
        except Exception as exc:  # noqa: BLE001
            logger.warning("L1 cache fill failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        return entry, "l2"

    async def store(self, key: str, completion: dict[str, Any], settings: Cache, tenant: str) -> None:
        """Write a complete answer to L1 and (when on) L2, expiring ``settings.ttl`` seconds from
        now. Failures are logged, never raised."""
        now = self.wall_clock()
        entry = Entry(completion, now, now + settings.ttl)
        try:
            self.l1.set(key, entry, tenant)
        except Exception as exc:  # noqa: BLE001 - a full or broken /tmp must not fail the request
            logger.warning("L1 cache write failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        shared = self.l2(settings)
        if shared is not None:
            try:
                await anyio.to_thread.run_sync(shared.set, key, entry, tenant)
            except Exception as exc:  # noqa: BLE001
                logger.warning("L2 cache write failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _hit(self, entry: Entry, request: ChatRequest, reason: str) -> Answer:
        headers = {
            X_CACHE: HIT,
            X_R1EDGE_ROUTE: "cache",
            X_R1EDGE_REASON: reason,
            X_R1EDGE_ATTEMPTS: "0",
            AGE: str(max(0, int(self.wall_clock() - entry.stored_at))),
        }
        completion = copy.deepcopy(entry.completion)
        if request.stream:
            options = request.body.get("stream_options") or {}
            return Answer(stream=replay_sse(completion, bool(options.get("include_usage"))), extra_headers=headers)
        return Answer(completion=completion, extra_headers=headers)

    async def complete(
        self,
        gateway: CacheGateway,
        request: ChatRequest,
        tenant: str,
        cache_control_header: str | None,
        request_id: str,
        deadline: float | None = None,
        allow_degrade: bool = False,
    ) -> Answer:
        """Answer ``request`` from the cache, or through ``gateway.complete`` (storing the answer).

        Args:
            gateway: the gateway to answer through (:class:`~r1edge.cache.ports.CacheGateway`;
                the router's :class:`~r1edge.routing.gateway.Gateway`); its ``config.cache``
                settings apply.
            request: the validated request.
            tenant: the tenant the request acts for; part of the key, so no entry is shared
                between tenants.
            cache_control_header: the request's ``Cache-Control`` header, if any.
            request_id, deadline, allow_degrade: as for ``Gateway.complete`` (seconds).

        Raises:
            UpstreamTimeout: the deadline passed while waiting for an identical request in flight.
            OpenAIError: whatever ``Gateway.complete`` raises.
        """
        settings: Cache = gateway.config.cache
        deadline = gateway.config.deadline if deadline is None else deadline
        if not settings.enabled:
            return Answer.of(await gateway.complete(request, request_id, deadline, allow_degrade))
        with contextlib.suppress(Exception):  # a reloaded config may change the L1 cap
            self.l1.resize(settings.l1_size_limit)
        decision = gateway.decide(request)
        policy = cache_policy(request, decision.tier, settings, cache_control(cache_control_header))
        if not (policy.lookup or policy.store):
            routed = await gateway.complete(request, request_id, deadline, allow_degrade)
            return Answer.of(routed, {X_CACHE: BYPASS})
        upstream_models = [e.upstream_model for e in gateway.config.tier_endpoints(decision.tier)]
        key = cache_key(tenant, request.model, decision.tier, upstream_models, request.body)
        started = gateway.clock()
        while True:
            if policy.lookup:
                found = await self.lookup(key, settings)
                if found is not None:
                    entry, level = found
                    logger.info("cache hit", extra={"request_id": request_id, "level": level, "key": key[:16]})
                    return self._hit(entry, request, f"hit:{level}")
                flight = self.coalescer.in_flight(key)
                if flight is not None:
                    shared = await self.coalescer.wait(flight, deadline - (gateway.clock() - started))
                    if shared is not None:
                        now = self.wall_clock()
                        logger.info("coalesced", extra={"request_id": request_id, "key": key[:16]})
                        return self._hit(Entry(shared, now, now), request, "coalesced")
                    continue  # the request we waited for failed: look again, or go upstream
            left = deadline - (gateway.clock() - started)
            return await self._lead(gateway, request, key, policy, settings, tenant, request_id, left, allow_degrade)

    async def _lead(
        self,
        gateway: CacheGateway,
        request: ChatRequest,
        key: str,
        policy: Policy,
        settings: Cache,
        tenant: str,
        request_id: str,
        deadline: float,
        allow_degrade: bool,
    ) -> Answer:
        """Go upstream for ``key``; identical requests wait on :attr:`flights` meanwhile (unless
        this one skipped the lookup and another already leads)."""
        settle = self.coalescer.lead(key)
        try:
            routed = await gateway.complete(request, request_id, max(0.0, deadline), allow_degrade)
        except BaseException:
            settle(None)
            raise
        headers = {X_CACHE: MISS}
        if routed.stream is None:
            completion = routed.completion
            whole = completion is not None and complete_answer(completion)
            if whole and policy.store:
                await self.store(key, completion, settings, tenant)
            settle(copy.deepcopy(completion) if whole else None)
            return Answer.of(routed, headers)
        return Answer(
            stream=self._recorded(routed.stream, key, policy, settings, tenant, settle),
            routed=routed,
            extra_headers=headers,
        )

    async def _recorded(
        self,
        stream: AsyncIterator[bytes],
        key: str,
        policy: Policy,
        settings: Cache,
        tenant: str,
        settle: Settle,
    ) -> AsyncIterator[bytes]:
        """Pass ``stream`` through unchanged, assembling its chunks; on a clean ``data: [DONE]``
        after a complete answer, store it (before the ``[DONE]`` goes out) and hand it to the
        waiting requests. A truncated stream, an error event, a stream over
        :data:`MAX_ENTRY_BYTES` or a client that goes away stores nothing, and the waiting
        requests go upstream themselves."""
        assembler = StreamAssembler()
        seen = 0
        try:
            async for data in stream:
                seen += len(data)
                if seen > MAX_ENTRY_BYTES and not assembler.failed:
                    assembler = StreamAssembler()  # too large to store: let go of what it held
                    assembler.failed = True
                for event in parse_events(data) if not assembler.failed else ():
                    if event == "[DONE]":
                        completion = assembler.result()
                        if completion is not None and complete_answer(completion):
                            if policy.store:
                                await self.store(key, completion, settings, tenant)
                            settle(copy.deepcopy(completion))
                    elif isinstance(event, dict):
                        assembler.feed(event)
                    else:
                        assembler.failed = True
                yield data
        finally:
            settle(None)
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
