"""Usage records: requests, prompt tokens and completion tokens per tenant, per UTC day and
route, so operators can see who spends the GPU time.

One DynamoDB item per ``(tenant, "YYYY-MM-DD#route")`` (partition key ``tenant``, sort key
``period``), updated with an atomic ``UpdateItem ... ADD`` per answered request — no read, no
lost update between containers. Query one tenant's days with ``tenant = :t AND begins_with(period,
:month)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from r1edge.aws.ddb import Table

USAGE_TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [
        {"AttributeName": "tenant", "KeyType": "HASH"},
        {"AttributeName": "period", "KeyType": "RANGE"},
    ],
    "AttributeDefinitions": [
        {"AttributeName": "tenant", "AttributeType": "S"},
        {"AttributeName": "period", "AttributeType": "S"},
    ],
    "BillingMode": "PAY_PER_REQUEST",
}


@dataclass(frozen=True)
class Usage:
    """One request's counts: ``prompt_tokens`` and ``completion_tokens`` (tokens)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(obj: Any) -> Usage | None:
    """The ``usage`` object of a completion or chunk as :class:`Usage`, or ``None``: OpenAI's
    ``prompt_tokens``/``completion_tokens``; an embeddings answer's ``usage`` (``prompt_tokens``
    and ``total_tokens``, no ``completion_tokens``: OpenAI API reference, "Embeddings") counts as 0
    completion tokens; or the Anthropic Messages API's ``input_tokens``/``output_tokens`` (a
    ``message`` object, or the ``message_delta`` event that :mod:`r1edge.dialects.anthropic` sends
    with both). The Responses API's ``response`` object
    (``input_tokens``/``output_tokens``; OpenAI API reference, "The response object") is read too,
    and so is a Responses stream event (``response.completed``, ``response.incomplete``,
    ``response.failed``) that carries it under ``response``."""
    if isinstance(obj, dict) and "usage" not in obj and isinstance(obj.get("response"), dict):
        obj = obj["response"]
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if prompt is None and completion is None:
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if completion is None and isinstance(usage.get("total_tokens"), int):
        completion = 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(max(0, prompt), max(0, completion))


class UsageStore(Protocol):
    def add(self, tenant: str, period: str, requests: int, prompt_tokens: int, completion_tokens: int) -> None: ...


class DynamoUsageStore:
    """:class:`UsageStore` on a DynamoDB table (:data:`USAGE_TABLE_SCHEMA`).

    Args:
        table_name: the table name.
        client: a DynamoDB low-level client or :class:`~r1edge.aws.clients.LazyClient` (tests
            inject moto's); default: one made on first use (:class:`r1edge.aws.ddb.Table`).
    """

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self.table = Table(table_name, client)

    def add(self, tenant: str, period: str, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.table.update_item(
            Key={"tenant": tenant, "period": period},
            UpdateExpression="ADD requests :r, prompt_tokens :p, completion_tokens :c",
            ExpressionAttributeValues={":r": requests, ":p": prompt_tokens, ":c": completion_tokens},
        )


class UsageRecorder:
    """Adds each answered request to its tenant's record of the day.

    Args:
        store: where records live.
        clock: wall-clock seconds (the UTC day is taken from it).
    """

    def __init__(self, store: UsageStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def period(self, route: str) -> str:
        """``YYYY-MM-DD#route`` for today (UTC)."""
        return f"{datetime.fromtimestamp(self.clock(), UTC).date().isoformat()}#{route}"

    def record(self, tenant: str, route: str, usage: Usage) -> None:
        """Count one request of ``tenant`` answered by ``route`` (``edge``, ``cluster``, …)."""
        self.store.add(tenant, self.period(route), 1, usage.prompt_tokens, usage.completion_tokens)
