"""Per-key limits that hold across Lambda containers: requests per minute and tokens per minute.

Each API key has two token buckets (one item in the limits table): ``requests`` with capacity
``requests_per_minute``, ``tokens`` with capacity ``tokens_per_minute``, each refilled
continuously at capacity / 60 per second. A request takes 1 from the first; a chat completion
takes its estimated size from the second (prompt estimate plus ``max_tokens``, as OpenAI counts
it: "Rate limits", "How do these rate limits work?"), and is settled against its real usage once
the answer is complete — unused tokens go back, overruns become debt the key repays before its
next request. A charge larger than a whole bucket is capped at the bucket's capacity, so such a
request waits for a full bucket rather than being refused forever.

Atomicity: the item is read (strongly consistent), the refill and charge computed here
(:func:`take`, pure), and written back with a conditional ``PutItem`` on the version read
(``attribute_not_exists`` for a new item). A concurrent writer — another container — makes the
condition fail, and the whole step is retried on fresh state, so no two containers can spend
the same tokens (optimistic concurrency, DynamoDB Developer Guide, "Condition expressions").
Settling is one ``UpdateItem ... ADD``, atomic on its own, that also bumps the version.

Clock: wall-clock seconds (``time.time``), injected, since buckets are shared between hosts.

Answers carry OpenAI's headers (API reference, "Rate limits"): ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (time until the bucket is
full again, e.g. ``1s``, ``6m0s``, ``20ms``) and the same for ``-tokens``. A request over a limit
gets 429 ``rate_limit_exceeded`` with type ``requests`` or ``tokens`` and ``Retry-After``
(whole seconds, RFC 9110 section 10.2.3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from r1edge.ddb import TableHandle
from r1edge.errors import Overloaded, RateLimited

#: Environment variable naming the limits table.
LIMITS_TABLE_ENV = "R1EDGE_LIMITS_TABLE"
#: Seconds an idle bucket item is kept (DynamoDB TTL attribute ``expires``); after 60 s idle a
#: bucket is full anyway, so losing the item loses nothing.
ITEM_TTL_SECONDS = 3600
#: Conditional writes tried before giving up on a contended bucket (503 then).
MAX_TRIES = 10

LIMITS_TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "bucket_key", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "bucket_key", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


@dataclass(frozen=True)
class Limits:
    """A key's limits: requests and tokens per minute (bucket capacities)."""

    requests_per_minute: int
    tokens_per_minute: int


@dataclass(frozen=True)
class Buckets:
    """Stored state of a key's two buckets.

    Attributes:
        requests: requests left (may be fractional while refilling).
        tokens: tokens left; negative while the key is in debt after an overrun.
        updated: wall-clock seconds of the last refill.
        version: incremented on every write (the optimistic-concurrency check).
    """

    requests: float
    tokens: float
    updated: float
    version: int = 0


def refill(buckets: Buckets | None, limits: Limits, now: float) -> Buckets:
    """The buckets at ``now``: refilled at capacity / 60 per second, capped at capacity; full
    when there is no stored state yet. ``version`` is kept (it names the state read)."""
    if buckets is None:
        return Buckets(float(limits.requests_per_minute), float(limits.tokens_per_minute), now, -1)
    elapsed = max(0.0, now - buckets.updated)
    return Buckets(
        min(float(limits.requests_per_minute), buckets.requests + elapsed * limits.requests_per_minute / 60.0),
        min(float(limits.tokens_per_minute), buckets.tokens + elapsed * limits.tokens_per_minute / 60.0),
        max(now, buckets.updated),
        buckets.version,
    )


def format_reset(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` duration format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 100) / 100:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(frozen=True)
class LimitStatus:
    """What a key has left after a request: the source of the ``x-ratelimit-*`` headers."""

    limits: Limits
    requests: float
    tokens: float

    def reset_requests(self) -> float:
        """Seconds until the request bucket is full again."""
        missing = self.limits.requests_per_minute - self.requests
        return max(0.0, missing * 60.0 / self.limits.requests_per_minute)

    def reset_tokens(self) -> float:
        """Seconds until the token bucket is full again."""
        missing = self.limits.tokens_per_minute - self.tokens
        return max(0.0, missing * 60.0 / self.limits.tokens_per_minute)

    def headers(self) -> dict[str, str]:
        """OpenAI's six ``x-ratelimit-*`` headers (remaining counts are whole, never negative)."""
        return {
            "x-ratelimit-limit-requests": str(self.limits.requests_per_minute),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(self.requests))),
            "x-ratelimit-reset-requests": format_reset(self.reset_requests()),
            "x-ratelimit-limit-tokens": str(self.limits.tokens_per_minute),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.tokens))),
            "x-ratelimit-reset-tokens": format_reset(self.reset_tokens()),
        }


@dataclass(frozen=True)
class Taken:
    """Result of :func:`take`: the new state (``None`` when refused), what is left, and for a
    refusal which bucket (``"requests"`` or ``"tokens"``) and the seconds until it would pass."""

    buckets: Buckets | None
    status: LimitStatus
    refused: str | None = None
    retry_after: float = 0.0


def take(stored: Buckets | None, limits: Limits, now: float, requests: int = 0, tokens: int = 0) -> Taken:
    """Refill the buckets to ``now`` and take ``requests`` and ``tokens`` (each capped at its
    bucket's capacity) from them, all or nothing. Pure."""
    current = refill(stored, limits, now)
    need_requests = min(requests, limits.requests_per_minute)
    need_tokens = min(tokens, limits.tokens_per_minute)
    if need_requests > current.requests + 1e-9:
        wait = (need_requests - current.requests) * 60.0 / limits.requests_per_minute
        return Taken(None, LimitStatus(limits, current.requests, current.tokens), "requests", wait)
    if need_tokens > 0 and need_tokens > current.tokens + 1e-9:
        wait = (need_tokens - current.tokens) * 60.0 / limits.tokens_per_minute
        return Taken(None, LimitStatus(limits, current.requests, current.tokens), "tokens", wait)
    after = replace(
        current, requests=current.requests - need_requests, tokens=current.tokens - need_tokens, updated=now
    )
    return Taken(after, LimitStatus(limits, after.requests, after.tokens))


class BucketStore(Protocol):
    """Where bucket state lives; writes are conditional on the version read."""

    def load(self, bucket_key: str) -> Buckets | None: ...

    def save(self, bucket_key: str, buckets: Buckets, expected_version: int) -> bool:
        """Write ``buckets`` (with version ``expected_version + 1``) only if the stored version
        is still ``expected_version`` (``-1``: only if there is no item). ``False`` on conflict."""
        ...

    def add_tokens(self, bucket_key: str, delta: float) -> None: ...


def _num(value: float) -> Decimal:
    return Decimal(str(round(value, 6)))


class DynamoBucketStore:
    """:class:`BucketStore` on a DynamoDB table (:data:`LIMITS_TABLE_SCHEMA`, TTL attribute
    ``expires``). boto3 is created on first use (``AWS_ENDPOINT_URL_DYNAMODB`` locally)."""

    def __init__(self, table_name: str, resource: Any = None) -> None:
        self.table_name = table_name
        self._handle = TableHandle(table_name, resource)

    @property
    def table(self) -> Any:
        return self._handle.table

    def load(self, bucket_key: str) -> Buckets | None:
        item = self.table.get_item(Key={"bucket_key": bucket_key}, ConsistentRead=True).get("Item")
        if not item or "updated" not in item:
            return None
        return Buckets(float(item["requests"]), float(item["tokens"]), float(item["updated"]), int(item["version"]))

    def save(self, bucket_key: str, buckets: Buckets, expected_version: int) -> bool:
        from botocore.exceptions import ClientError

        condition: dict[str, Any]
        if expected_version < 0:
            condition = {"ConditionExpression": "attribute_not_exists(bucket_key)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": expected_version},
            }
        item = {
            "bucket_key": bucket_key,
            "requests": _num(buckets.requests),
            "tokens": _num(buckets.tokens),
            "updated": _num(buckets.updated),
            "version": expected_version + 1,
            "expires": int(buckets.updated) + ITEM_TTL_SECONDS,
        }
        try:
            self.table.put_item(Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def add_tokens(self, bucket_key: str, delta: float) -> None:
        from botocore.exceptions import ClientError

        try:
            self.table.update_item(
                Key={"bucket_key": bucket_key},
                UpdateExpression="ADD tokens :d, version :one",
                ConditionExpression="attribute_exists(bucket_key)",
                ExpressionAttributeValues={":d": _num(delta), ":one": 1},
            )
        except ClientError as exc:  # an expired item is a full bucket: nothing to settle
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise


class RateLimiter:
    """Takes requests and tokens from a key's buckets.

    Args:
        store: bucket storage (DynamoDB in AWS and locally, a dict-backed fake in unit tests).
        clock: wall-clock seconds (injected in tests).
        max_tries: conditional writes tried on contention before a 503.
    """

    def __init__(self, store: BucketStore, clock: Callable[[], float] = time.time, max_tries: int = MAX_TRIES):
        self.store = store
        self.clock = clock
        self.max_tries = max_tries

    def acquire(self, bucket_key: str, limits: Limits, requests: int = 0, tokens: int = 0) -> LimitStatus:
        """Take ``requests`` and ``tokens`` from ``bucket_key``'s buckets, all or nothing.

        Returns:
            What is left (for the ``x-ratelimit-*`` headers).

        Raises:
            RateLimited: 429, type ``requests`` or ``tokens``, with ``Retry-After`` and the
                ``x-ratelimit-*`` headers.
            Overloaded: 503 after :attr:`max_tries` lost write races (``Retry-After: 1``).
        """
        for _ in range(self.max_tries):
            stored = self.store.load(bucket_key)
            taken = take(stored, limits, self.clock(), requests, tokens)
            if taken.refused is not None:
                kind = taken.refused
                limit = limits.requests_per_minute if kind == "requests" else limits.tokens_per_minute
                unit = "requests" if kind == "requests" else "tokens"
                wait = max(1, math.ceil(taken.retry_after))
                raise RateLimited(
                    f"Rate limit reached for {unit} per minute (limit {limit}). Please try again in {wait}s.",
                    type=kind,
                    headers={**taken.status.headers(), "Retry-After": str(wait)},
                )
            assert taken.buckets is not None
            version = stored.version if stored is not None else -1
            if self.store.save(bucket_key, taken.buckets, version):
                return taken.status
        raise Overloaded("The rate limiter is busy; please retry.", headers={"Retry-After": "1"})

    def settle(self, bucket_key: str, delta_tokens: float) -> None:
        """Give back ``delta_tokens`` (positive: charged more than used) or take more (negative:
        an overrun, which may leave the bucket in debt)."""
        if delta_tokens:
            self.store.add_tokens(bucket_key, delta_tokens)
