"""The exact response cache: answer a repeated request without any upstream call.

Two levels (docs/ARCHITECTURE.md, "Request path"): L1 is a per-container ``diskcache.Cache`` in ``/tmp`` with a
size cap (least recently used entries are evicted); L2 is a DynamoDB table shared by every
container, whose items carry an ``expires_at`` TTL attribute. A lookup tries L1, then L2 (and
fills L1 from it); a store writes both.

**Key** (:func:`cache_key`): SHA-256 over a canonical JSON encoding (keys sorted, no
insignificant whitespace, ``1.0`` written as ``1``, ``null`` fields dropped because ``null`` means
absent) of the tenant, the requested model, the tier it resolves to (after classification), the
upstream model names of that tier, the messages and every other request field except
``stream``, ``stream_options`` and fields that cannot change the output (``user``, ``metadata``,
``store``). Everything else — ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``,
``n``, ``tools``, ``tool_choice``, ``response_format``, penalties, ``logit_bias``, reasoning
options, and any field we do not know — splits entries. A missing ``temperature`` is not 0
(engines default to 0.2 or 1). Streamed and JSON requests share entries.

**What is cached** (:func:`cache_policy`): only deterministic requests (``temperature`` 0, or a
``seed``) unless ``cache.nondeterministic_models`` widens it; only complete, successful answers
(every choice's ``finish_reason`` ``stop`` or ``length``; a stream only after its ``data:
[DONE]``); ``Cache-Control: no-cache`` skips the lookup and ``no-store`` the store (RFC 9111
§5.2.1.4 and §5.2.1.5, the request directives).

**Replay**: a stored answer goes back as JSON, or for ``stream: true`` as SSE chunks ending with
``data: [DONE]``, ``reasoning_content`` and ``usage`` kept (usage as a last chunk when the request
asks ``stream_options.include_usage``, as OpenAI streams do). Headers say ``x-cache: HIT|MISS|
BYPASS``; a hit also says ``x-r1edge-route: cache`` and ``Age`` (seconds since stored, RFC 9111
§5.1).

**Coalescing**: identical requests (same key) arriving while one is upstream wait for it, each
for at most its own deadline, and get its answer (``x-r1edge-reason: coalesced``); if it fails,
they look again and one of them goes upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import diskcache
from aws_lambda_powertools import Logger

from r1edge.protocol.errors import UpstreamTimeout
from r1edge.protocol.sse import DONE, sse_data
from r1edge.protocol.validation import ChatRequest
from r1edge.routing.config import MODEL_TIERS, Cache

logger = Logger(service="r1edge-router", child=True)

#: Bumped when the key or the entry format changes, so old entries are never misread.
KEY_VERSION = 1
#: Request fields that are not part of the key: how the answer is delivered, or fields that
#: cannot change it (OpenAI API reference: ``user`` and ``metadata`` are for abuse tracking and
#: filtering, ``store`` for OpenAI's own storage). ``model`` is replaced by the resolved names.
UNKEYED_FIELDS = frozenset({"model", "stream", "stream_options", "user", "metadata", "store"})
#: ``finish_reason`` values of a complete, successful answer (OpenAI API reference).
CACHEABLE_FINISH = frozenset({"stop", "length"})
#: Largest entry written to DynamoDB: its item limit is 400 KB ("Service, account, and table
#: quotas in Amazon DynamoDB"), attribute names and the key included; larger ones stay in L1.
MAX_L2_ITEM_BYTES = 380_000
#: botocore settings of the L2 client: the cache is an optimisation, so a slow or unreachable
#: DynamoDB costs a request at most about 2 × (1 + 2) s, then counts as a miss (seconds).
L2_CLIENT_CONFIG = {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 2, "mode": "standard"}}
#: The public model name of each tier (for ``cache.nondeterministic_models`` and ``auto``).
TIER_MODELS = {tier: name for name, tier in MODEL_TIERS.items() if tier is not None}

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


def _normalise(value: Any) -> Any:
    """JSON value with ``null`` members dropped and integral floats as ints (``0.0`` → ``0``)."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON of a decoded JSON value: keys sorted, no insignificant whitespace,
    ``null`` object members dropped (a ``null`` field means absent, as in the request rules),
    integral numbers written without a fraction. Strings are kept exactly (whitespace inside a
    message is significant)."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def cache_key(tenant: str, model: str, tier: str, upstream_models: list[str], body: dict[str, Any]) -> str:
    """The cache key of a request: 64 hex digits of SHA-256 over the canonical JSON of the tenant,
    the requested public model, the resolved tier, that tier's upstream model names (sorted), and
    the request body without :data:`UNKEYED_FIELDS`.

    Args:
        tenant: the tenant the request acts for (:func:`r1edge.protocol.web.tenant`).
        model: the requested public model name (``auto``, ``edge``, ``deepseek-r1``).
        tier: the tier the request resolves to (``edge`` or ``cluster``).
        upstream_models: model names sent to that tier's endpoints.
        body: the validated request body.
    """
    keyed = {k: v for k, v in body.items() if k not in UNKEYED_FIELDS}
    document = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "model": model,
        "tier": tier,
        "upstream_models": sorted(set(upstream_models)),
        "request": keyed,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


def cache_control(header: str | None) -> set[str]:
    """The directive names of a ``Cache-Control`` request header, lower-cased (RFC 9111 §5.2:
    comma-separated, case-insensitive names, optional ``=value``)."""
    if not header:
        return set()
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def deterministic(request: ChatRequest) -> bool:
    """Whether the answer is fixed by the request: ``temperature`` 0, or a ``seed`` given. A
    missing temperature is not 0 (llama.cpp defaults to 0.2, OpenAI to 1)."""
    return request.temperature == 0 or request.body.get("seed") is not None


@dataclass(frozen=True)
class Policy:
    """What the cache does for one request: ``lookup`` (and coalesce), ``store``, and the
    ``x-cache`` value when nothing is looked up (``BYPASS``)."""

    lookup: bool
    store: bool


def cache_policy(request: ChatRequest, tier: str, settings: Cache, directives: set[str]) -> Policy:
    """Decide whether to look up and whether to store.

    Args:
        request: the validated request.
        tier: the tier the request resolves to.
        settings: the config's ``cache`` section.
        directives: the request's ``Cache-Control`` directives (:func:`cache_control`).

    Rules: nothing when the cache is off; nothing for a non-deterministic request unless its
    model (or, for ``auto``, its tier's public model) is in ``nondeterministic_models``;
    ``no-cache`` skips the lookup and ``no-store`` the store (RFC 9111 §5.2.1).
    """
    if not settings.enabled:
        return Policy(False, False)
    widened = {request.model, TIER_MODELS.get(tier, "")} & set(settings.nondeterministic_models)
    if not (deterministic(request) or widened):
        return Policy(False, False)
    return Policy(lookup="no-cache" not in directives, store="no-store" not in directives)


def complete_answer(completion: dict[str, Any]) -> bool:
    """Whether a chat completion is whole and successful: at least one choice, and every
    choice's ``finish_reason`` is ``stop`` or ``length``."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH for c in choices)


class StreamAssembler:
    """Builds the ``chat.completion`` object a stream amounts to, from its chunk objects.

    Per choice ``index``: ``content`` and ``reasoning_content`` concatenated, ``tool_calls``
    merged by their ``index`` (``arguments`` concatenated), ``logprobs.content`` joined, the last
    ``finish_reason``; ``usage`` from the chunk that carries it. ``failed`` is set by an error
    event; :meth:`result` is then ``None``.
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.failed = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """Take one chunk object (an ``error`` object marks the stream failed)."""
        if "error" in chunk:
            self.failed = True
            return
        for name in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(name) is not None and name not in self.head:
                self.head[name] = chunk[name]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = self.choices.setdefault(
                index, {"role": None, "content": None, "reasoning": None, "tools": {}, "logprobs": None, "finish": None}
            )
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if delta.get("role"):
                state["role"] = delta["role"]
            for name, slot in (("content", "content"), ("reasoning_content", "reasoning")):
                if isinstance(delta.get(name), str):
                    state[slot] = (state[slot] or "") + delta[name]
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._tool_call(state["tools"], call)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                state["logprobs"] = (state["logprobs"] or []) + logprobs["content"]
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    @staticmethod
    def _tool_call(tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        slot = tools.setdefault(call.get("index", len(tools)), {"function": {"name": "", "arguments": ""}})
        for name in ("id", "type"):
            if call.get(name):
                slot[name] = call[name]
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        for name in ("name", "arguments"):
            if isinstance(function.get(name), str):
                slot["function"][name] += function[name]

    def result(self) -> dict[str, Any] | None:
        """The assembled completion, or ``None`` after an error event or with no choice."""
        if self.failed or not self.choices:
            return None
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {"role": state["role"] or "assistant", "content": state["content"]}
            if state["reasoning"] is not None:
                message["reasoning_content"] = state["reasoning"]
            if state["tools"]:
                message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
            choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": state["finish"]}
            choice["logprobs"] = {"content": state["logprobs"]} if state["logprobs"] is not None else None
            choices.append(choice)
        completion: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self.head:
            completion["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion


def sse_events(data: bytes) -> list[dict[str, Any] | str]:
    """The ``data:`` payloads of SSE bytes made of whole events: decoded JSON objects, or the
    raw string (``"[DONE]"``, or anything that is not a JSON object). Comments are skipped."""
    events: list[dict[str, Any] | str] = []
    for block in data.split(b"\n\n"):
        lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            continue
        payload = b"\n".join(lines).decode("utf-8", "replace")
        try:
            obj = json.loads(payload)
        except ValueError:
            events.append(payload)
            continue
        events.append(obj if isinstance(obj, dict) else payload)
    return events


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that stream ``completion``: per choice a role delta,
    a ``reasoning_content`` delta, a ``content`` delta, ``tool_calls``, and a ``finish_reason``
    chunk; then, when ``include_usage``, a ``choices: []`` chunk with ``usage`` (OpenAI's
    ``stream_options.include_usage``)."""
    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    chunks = []
    for choice in completion.get("choices", []):
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append(chunk(index, {"role": message.get("role") or "assistant", "content": ""}))
        if message.get("reasoning_content"):
            chunks.append(chunk(index, {"reasoning_content": message["reasoning_content"]}))
        if message.get("content"):
            chunks.append(chunk(index, {"content": message["content"]}, logprobs=choice.get("logprobs")))
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            chunks.append(chunk(index, {"tool_calls": calls}))
        chunks.append(chunk(index, {}, finish=choice.get("finish_reason")))
    if include_usage and completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


async def replay_sse(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """:func:`replay_chunks` as SSE events, then ``data: [DONE]``."""
    for chunk in replay_chunks(completion, include_usage):
        yield sse_data(chunk)
    yield DONE


@dataclass
class Entry:
    """A stored answer: the completion, and when it was stored and expires (epoch seconds)."""

    completion: dict[str, Any]
    stored_at: float
    expires_at: float

    def to_json(self) -> str:
        return json.dumps(
            {"completion": self.completion, "stored_at": self.stored_at, "expires_at": self.expires_at},
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        """Raises ``ValueError``/``KeyError``/``TypeError`` on a malformed entry."""
        obj = json.loads(text)
        return cls(dict(obj["completion"]), float(obj["stored_at"]), float(obj["expires_at"]))


class Store(Protocol):
    """One cache level. ``get`` returns the entry or ``None``; ``set`` stores one. Either may
    raise on I/O failure; :class:`ResponseCache` logs it and carries on without the cache."""

    def get(self, key: str) -> Entry | None: ...

    def set(self, key: str, entry: Entry, tenant: str) -> None: ...


class DiskStore:
    """L1: a ``diskcache.Cache`` in ``directory`` of at most ``size_limit`` bytes (a soft limit:
    on each write, least recently used entries are culled while the cache is over it). Each
    entry also carries diskcache's own expiry, so expired entries are purged as space is needed.

    Args:
        directory: where the cache lives (``R1EDGE_CACHE_DIR``, or a fresh temporary directory).
        size_limit: bytes.
        wall_clock: epoch seconds (injected in tests), to compute diskcache's expiry.
    """

    def __init__(self, directory: str, size_limit: int, wall_clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.wall_clock = wall_clock
        self.cache = diskcache.Cache(directory, size_limit=size_limit, eviction_policy="least-recently-used")

    def resize(self, size_limit: int) -> None:
        """Change the size limit (bytes) of an open cache."""
        if self.cache.size_limit != size_limit:
            self.cache.reset("size_limit", size_limit)

    def get(self, key: str) -> Entry | None:
        text = self.cache.get(key)
        return None if text is None else Entry.from_json(text)

    def set(self, key: str, entry: Entry, tenant: str) -> None:
        self.cache.set(key, entry.to_json(), expire=max(1.0, entry.expires_at - self.wall_clock()))

    def close(self) -> None:
        self.cache.close()


class DynamoStore:
    """L2: a DynamoDB table with partition key ``key`` (S) and the TTL attribute ``expires_at``
    (N, epoch seconds: "Using time to live (TTL) in DynamoDB"). Items also hold ``tenant`` (S),
    ``stored_at`` (N) and ``entry`` (S, JSON). DynamoDB deletes expired items lazily, so reads
    check ``expires_at`` themselves (:class:`ResponseCache`).

    Args:
        table: the table name.
        client: a boto3 DynamoDB client (default: created on first use with :data:`L2_CLIENT_CONFIG`;
            ``AWS_ENDPOINT_URL_DYNAMODB`` points it at moto locally).
    """

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # lazy: only an L2 cache needs it
            from botocore.config import Config

            self._client = boto3.client("dynamodb", config=Config(**L2_CLIENT_CONFIG))
        return self._client

    def get(self, key: str) -> Entry | None:
        item = self.client.get_item(TableName=self.table, Key={"key": {"S": key}}).get("Item")
        return None if item is None else Entry.from_json(item["entry"]["S"])

    def set(self, key: str, entry: Entry, tenant: str) -> None:
        text = entry.to_json()
        if len(text.encode("utf-8")) > MAX_L2_ITEM_BYTES:
            logger.info("cache entry too large for DynamoDB; kept in L1 only", extra={"bytes": len(text)})
            return
        self.client.put_item(
            TableName=self.table,
            Item={
                "key": {"S": key},
                "tenant": {"S": tenant},
                "stored_at": {"N": str(int(entry.stored_at))},
                "expires_at": {"N": str(int(entry.expires_at))},
                "entry": {"S": text},
            },
        )


@dataclass
class Answer:
    """What the router sends: a JSON ``completion`` or an SSE ``stream``, with headers.

    ``routed`` is the gateway's answer when an upstream answered (``None`` for a hit)."""

    completion: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    routed: Any = None

    @classmethod
    def of(cls, routed: Any, extra_headers: dict[str, str] | None = None) -> Answer:
        """The answer a :class:`~r1edge.routing.gateway.Routed` gives, with ``extra_headers``."""
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
        self.flights: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

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
        directory = environ.get("R1EDGE_CACHE_DIR")
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
            "x-cache": HIT,
            "x-r1edge-route": "cache",
            "x-r1edge-reason": reason,
            "x-r1edge-attempts": "0",
            "age": str(max(0, int(self.wall_clock() - entry.stored_at))),
        }
        completion = copy.deepcopy(entry.completion)
        if request.stream:
            options = request.body.get("stream_options") or {}
            return Answer(stream=replay_sse(completion, bool(options.get("include_usage"))), extra_headers=headers)
        return Answer(completion=completion, extra_headers=headers)

    async def complete(
        self,
        gateway: Any,
        request: ChatRequest,
        tenant: str,
        cache_control_header: str | None,
        request_id: str,
        deadline: float | None = None,
        allow_degrade: bool = False,
    ) -> Answer:
        """Answer ``request`` from the cache, or through ``gateway.complete`` (storing the answer).

        Args:
            gateway: the :class:`~r1edge.routing.gateway.Gateway` (its ``config.cache`` settings apply).
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
            return Answer.of(routed, {"x-cache": BYPASS})
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
                flight = self.flights.get(key)
                if flight is not None:
                    left = deadline - (gateway.clock() - started)
                    try:
                        shared = await asyncio.wait_for(asyncio.shield(flight), timeout=max(0.0, left))
                    except TimeoutError:
                        raise UpstreamTimeout(
                            "No answer within the deadline while an identical request was in flight.",
                            headers={"x-cache": MISS},
                        ) from None
                    if shared is not None:
                        now = self.wall_clock()
                        logger.info("coalesced", extra={"request_id": request_id, "key": key[:16]})
                        return self._hit(Entry(shared, now, now), request, "coalesced")
                    continue  # the request we waited for failed: look again, or go upstream
            left = deadline - (gateway.clock() - started)
            return await self._lead(gateway, request, key, policy, settings, tenant, request_id, left, allow_degrade)

    async def _lead(
        self,
        gateway: Any,
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
        future: asyncio.Future[dict[str, Any] | None] | None = None
        if key not in self.flights:
            future = asyncio.get_running_loop().create_future()
            self.flights[key] = future

        def settle(completion: dict[str, Any] | None) -> None:
            if future is not None and not future.done():
                future.set_result(completion)
                if self.flights.get(key) is future:
                    del self.flights[key]

        try:
            routed = await gateway.complete(request, request_id, max(0.0, deadline), allow_degrade)
        except BaseException:
            settle(None)
            raise
        headers = {"x-cache": MISS}
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
        settle: Callable[[dict[str, Any] | None], None],
    ) -> AsyncIterator[bytes]:
        """Pass ``stream`` through unchanged, assembling its chunks; on a clean ``data: [DONE]``
        after a complete answer, store it (before the ``[DONE]`` goes out) and hand it to the
        waiting requests. A truncated stream, an error event or a client that goes away stores
        nothing, and the waiting requests go upstream themselves."""
        assembler = StreamAssembler()
        try:
            async for data in stream:
                for event in sse_events(data):
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
