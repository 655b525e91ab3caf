"""Per-key limits that hold across Lambda containers: requests per minute and tokens per minute.

Each API key has two token buckets: ``requests`` with capacity ``requests_per_minute`` and
``tokens`` with capacity ``tokens_per_minute``, each refilled continuously at capacity / 60 per
second. A request takes 1 from the first; a chat completion takes its estimated size from the
second (prompt estimate plus ``max_tokens``, as OpenAI counts it: "Rate limits", "How do these
rate limits work?") and is settled against its real usage once the answer is complete — unused
tokens go back, overruns become debt the key repays before its next request. A charge larger
than a whole bucket is capped at the bucket's capacity, so such a request waits for a full bucket
rather than being refused forever.

A bucket is stored as one number, its *theoretical arrival time* ``tat`` (the generic cell rate
algorithm, ITU-T I.371, the token bucket in another form): each unit costs ``T = 60 / capacity``
seconds, the bucket is full when ``tat <= now``, and a charge of ``n`` units passes when
``max(tat, now) + n·T <= now + 60``; then ``tat`` becomes that sum. Units left are
``(now + 60 - tat) / T``.

Atomicity: each charge is one conditional ``UpdateItem`` — ``SET tat = tat + :cost`` on the
condition ``tat > :now AND tat <= :now + 60 - :cost`` (a bucket in use), or, when the bucket is
idle, ``SET tat = :now + :cost`` on ``attribute_not_exists(tat) OR tat <= :now`` — so every
container's charges land on the same number without a read first and without lost updates
(DynamoDB Developer Guide, "Condition expressions"; a refusal returns the item through
``ReturnValuesOnConditionCheckFailure``). Settling is one ``UpdateItem ... ADD``.

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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from r1edge.aws.ddb import Table
from r1edge.headers import (
    RETRY_AFTER,
    X_RATELIMIT_LIMIT_REQUESTS,
    X_RATELIMIT_LIMIT_TOKENS,
    X_RATELIMIT_REMAINING_REQUESTS,
    X_RATELIMIT_REMAINING_TOKENS,
    X_RATELIMIT_RESET_REQUESTS,
    X_RATELIMIT_RESET_TOKENS,
)
from r1edge.protocol.errors import Overloaded, RateLimited

#: The bucket window: a full bucket holds one minute of its rate (seconds).
WINDOW = 60.0
#: Seconds an item is kept after its last write (DynamoDB TTL attribute ``expires``); an expired
#: bucket is a full one, so this only has to outlast any debt.
ITEM_TTL_SECONDS = 86_400
#: Attempts when another container changes a bucket between the two conditional updates.
MAX_TRIES = 10
#: Attribute names of the two buckets' ``tat`` in an item.
FIELDS = {"requests": "requests_tat", "tokens": "tokens_tat"}

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
            X_RATELIMIT_LIMIT_REQUESTS: str(self.limits.requests_per_minute),
            X_RATELIMIT_REMAINING_REQUESTS: str(max(0, math.floor(self.requests))),
            X_RATELIMIT_RESET_REQUESTS: format_reset(self.reset_requests()),
            X_RATELIMIT_LIMIT_TOKENS: str(self.limits.tokens_per_minute),
            X_RATELIMIT_REMAINING_TOKENS: str(max(0, math.floor(self.tokens))),
            X_RATELIMIT_RESET_TOKENS: format_reset(self.reset_tokens()),
        }


def remaining(tat: float | None, capacity: int, now: float) -> float:
    """Units left in a bucket of ``capacity`` per minute whose ``tat`` is given (``None``: full);
    negative while in debt."""
    if tat is None or tat <= now:
        return float(capacity)
    # rounded: epoch seconds as floats carry ~2e-7 s of error, which must not cost a whole unit
    return round(capacity - (tat - now) * capacity / WINDOW, 2)


def status_of(item: dict[str, float], limits: Limits, now: float) -> LimitStatus:
    """:class:`LimitStatus` from an item's two ``tat`` values (absent: a full bucket)."""
    return LimitStatus(
        limits,
        remaining(item.get(FIELDS["requests"]), limits.requests_per_minute, now),
        remaining(item.get(FIELDS["tokens"]), limits.tokens_per_minute, now),
    )


def charge(tat: float | None, cost: float, now: float) -> tuple[bool, float]:
    """The rule every store applies atomically: a charge of ``cost`` seconds passes when
    ``max(tat, now) + cost <= now + WINDOW``. Returns ``(passed, tat after)`` — on a refusal,
    the ``tat`` unchanged. Pure."""
    start = now if tat is None or tat <= now else tat
    if start + cost > now + WINDOW + 1e-9:
        return False, start
    return True, start + cost


class BucketStore(Protocol):
    """Where bucket state lives. Implementations apply :func:`charge` atomically."""

    def take(self, bucket_key: str, field: str, cost: float, now: float) -> tuple[bool, dict[str, float]]:
        """Apply :func:`charge` to ``field`` of ``bucket_key``'s item, atomically; return whether
        it passed and the item's ``tat`` values after it (before it, on a refusal)."""
        ...

    def add(self, bucket_key: str, field: str, seconds: float, now: float) -> None:
        """Add ``seconds`` to ``field`` (negative: give units back) when the item exists."""
        ...

    def load(self, bucket_key: str) -> dict[str, float]: ...


def _num(value: float) -> Decimal:
    return Decimal(str(round(value, 9)))


def _floats(item: dict[str, Any] | None) -> dict[str, float]:
    """The ``tat`` values of an item: deserialized (``Decimal``), or raw as a failed condition's
    ``Item`` arrives (``{"N": "…"}``: botocore does not deserialize error responses)."""
    out = {}
    for name in FIELDS.values():
        value = (item or {}).get(name)
        if value is not None:
            out[name] = float(value["N"] if isinstance(value, dict) else value)
    return out


class DynamoBucketStore:
    """:class:`BucketStore` on a DynamoDB table (:data:`LIMITS_TABLE_SCHEMA`, TTL attribute
    ``expires``): each charge is one or two conditional ``UpdateItem`` calls, never a read.

    Args:
        table_name: the table name.
        client: a DynamoDB low-level client or :class:`~r1edge.aws.clients.LazyClient` (tests
            inject moto's); default: one made on first use (:class:`r1edge.aws.ddb.Table`).
        max_tries: attempts of a charge when other containers keep changing the bucket.
    """

    def __init__(self, table_name: str, client: Any = None, max_tries: int = MAX_TRIES) -> None:
        self.table_name = table_name
        self.table = Table(table_name, client)
        self.max_tries = max_tries

    def take(self, bucket_key: str, field: str, cost: float, now: float) -> tuple[bool, dict[str, float]]:
        from botocore.exceptions import ClientError

        def failed(exc: ClientError) -> dict[str, Any] | None:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise exc
            return exc.response.get("Item")

        names = {"#t": field}
        expires = int(now + WINDOW) + ITEM_TTL_SECONDS
        for _ in range(self.max_tries):
            try:  # a bucket in use: tat moves on by the cost, if it stays within the window
                answer = self.table.update_item(
                    Key={"bucket_key": bucket_key},
                    UpdateExpression="SET #t = #t + :cost, expires = :exp",
                    ConditionExpression="#t > :now AND #t <= :latest",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={
                        ":cost": _num(cost),
                        ":now": _num(now),
                        ":latest": _num(now + WINDOW - cost),
                        ":exp": expires,
                    },
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return True, _floats(answer.get("Attributes"))
            except ClientError as exc:
                old = _floats(failed(exc))
                if field in old and old[field] > now:
                    return False, old  # in use and over the window: refused
            try:  # an idle (or new) bucket: tat starts from now
                answer = self.table.update_item(
                    Key={"bucket_key": bucket_key},
                    UpdateExpression="SET #t = :start, expires = :exp",
                    ConditionExpression="attribute_not_exists(#t) OR #t <= :now",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":start": _num(now + cost), ":now": _num(now), ":exp": expires},
                    ReturnValues="ALL_NEW",
                )
                return True, _floats(answer.get("Attributes"))
            except ClientError as exc:
                failed(exc)  # another container made it busy in between: try the first form again
        raise Overloaded("The rate limiter is busy; please retry.", headers={RETRY_AFTER: "1"})

    def add(self, bucket_key: str, field: str, seconds: float, now: float) -> None:
        from botocore.exceptions import ClientError

        try:
            self.table.update_item(
                Key={"bucket_key": bucket_key},
                UpdateExpression="ADD #t :d SET expires = :exp",
                ConditionExpression="attribute_exists(#t)",
                ExpressionAttributeNames={"#t": field},
                ExpressionAttributeValues={":d": _num(seconds), ":exp": int(now + WINDOW) + ITEM_TTL_SECONDS},
            )
        except ClientError as exc:  # no item: a full bucket, nothing to settle
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    def load(self, bucket_key: str) -> dict[str, float]:
        return _floats(self.table.get_item(Key={"bucket_key": bucket_key}, ConsistentRead=True).get("Item"))


class RateLimiter:
    """Takes requests and tokens from a key's buckets.

    Args:
        store: bucket storage (DynamoDB in AWS and locally, a dict-backed fake in unit tests).
        clock: wall-clock seconds (injected in tests).
    """

    def __init__(self, store: BucketStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def acquire(self, bucket_key: str, limits: Limits, requests: int = 0, tokens: int = 0) -> LimitStatus:
        """Take ``requests`` from the request bucket, or ``tokens`` from the token bucket (one
        of the two per call; each capped at its bucket's capacity).

        Returns:
            What is left (for the ``x-ratelimit-*`` headers).

        Raises:
            RateLimited: 429, type ``requests`` or ``tokens``, with ``Retry-After`` and the
                ``x-ratelimit-*`` headers.
            Overloaded: 503 when the bucket kept changing under every attempt.
        """
        kind, units = ("requests", requests) if requests else ("tokens", tokens)
        capacity = limits.requests_per_minute if kind == "requests" else limits.tokens_per_minute
        now = self.clock()
        cost = min(units, capacity) * WINDOW / capacity
        passed, item = self.store.take(bucket_key, FIELDS[kind], cost, now)
        status = status_of(item, limits, now)
        if passed:
            return status
        wait = max(1, math.ceil(item[FIELDS[kind]] + cost - (now + WINDOW)))
        raise RateLimited(
            f"Rate limit reached for {kind} per minute (limit {capacity}). Please try again in {wait}s.",
            type=kind,
            headers={**status.headers(), RETRY_AFTER: str(wait)},
        )

    def settle(self, bucket_key: str, limits: Limits, delta_tokens: float) -> None:
        """Give back ``delta_tokens`` (positive: charged more than used) or take more (negative:
        an overrun, which may leave the bucket in debt)."""
        if delta_tokens:
            seconds = -delta_tokens * WINDOW / limits.tokens_per_minute
            self.store.add(bucket_key, FIELDS["tokens"], seconds, self.clock())

    def status(self, bucket_key: str, limits: Limits) -> LimitStatus:
        """What is left now, without taking anything (one strongly consistent read)."""
        return status_of(self.store.load(bucket_key), limits, self.clock())
