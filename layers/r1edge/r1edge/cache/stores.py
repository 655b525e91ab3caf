"""The two levels of the response cache (docs/ARCHITECTURE.md, "Request path"): L1
(:class:`DiskStore`) is a per-container ``diskcache.Cache`` in ``/tmp`` with a size cap (least
recently used entries are evicted); L2 (:class:`DynamoStore`) is a DynamoDB table shared by every
container, whose items carry an ``expires_at`` TTL attribute, reached through
:class:`r1edge.aws.ddb.Table`. Both hold :class:`Entry` objects; neither checks expiry on read
(:class:`~r1edge.cache.response.ResponseCache` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import diskcache
from aws_lambda_powertools import Logger

from r1edge.aws.ddb import Table

logger = Logger(service="r1edge-router", child=True)

#: Largest entry written to DynamoDB: its item limit is 400 KB ("Service, account, and table
#: quotas in Amazon DynamoDB"), attribute names and the key included; larger ones stay in L1.
MAX_L2_ITEM_BYTES = 380_000
#: botocore settings of the L2 client: the cache is an optimisation, so a slow or unreachable
#: DynamoDB costs a request at most about 2 × (1 + 2) s, then counts as a miss (seconds).
L2_CLIENT_CONFIG = {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 2, "mode": "standard"}}


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
    raise on I/O failure; :class:`~r1edge.cache.response.ResponseCache` logs it and carries on without the cache."""

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
    check ``expires_at`` themselves (:class:`~r1edge.cache.response.ResponseCache`).

    Args:
        table: the table name.
        client: a DynamoDB low-level client or :class:`~r1edge.aws.clients.LazyClient` (tests
            inject one); default: one made on first use (:mod:`r1edge.aws.clients`) with
            :data:`L2_CLIENT_CONFIG` (``AWS_ENDPOINT_URL_DYNAMODB`` points it at moto locally).

    Errors of ``get``/``set`` are botocore's (``ClientError``, connection and read timeouts).
    """

    def __init__(self, table: str, client: Any = None) -> None:
        self.table_name = table
        self.table = Table(table, client, config=L2_CLIENT_CONFIG)

    def get(self, key: str) -> Entry | None:
        item = self.table.get_item(Key={"key": key}).get("Item")
        return None if item is None else Entry.from_json(item["entry"])

    def set(self, key: str, entry: Entry, tenant: str) -> None:
        text = entry.to_json()
        if len(text.encode("utf-8")) > MAX_L2_ITEM_BYTES:
            logger.info("cache entry too large for DynamoDB; kept in L1 only", extra={"bytes": len(text)})
            return
        self.table.put_item(
            Item={
                "key": key,
                "tenant": tenant,
                "stored_at": int(entry.stored_at),
                "expires_at": int(entry.expires_at),
                "entry": text,
            },
        )
