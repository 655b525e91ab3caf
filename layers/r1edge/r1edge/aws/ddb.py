"""A DynamoDB table with the resource API's calling convention (Python values in, Python values
out), on one low-level client shared by every thread.

boto3 resources and sessions are not thread-safe, low-level clients are (boto3 guide,
"Multithreading or multiprocessing with resources"), and the router calls its stores from a
thread pool (``anyio.to_thread``). Building a resource per thread would cost a session and a
service-model load per worker thread, so this adapter serializes with boto3's own
``TypeSerializer``/``TypeDeserializer`` around one client, created on first use under a lock. The
endpoint comes from ``AWS_ENDPOINT_URL_DYNAMODB`` when set (a moto server locally), as boto3 reads
it itself.
"""

from __future__ import annotations

import threading
from typing import Any

_SERIALIZED_ARGS = ("Key", "Item", "ExpressionAttributeValues", "ExclusiveStartKey")


class Table:
    """``get_item``, ``put_item``, ``update_item`` and ``scan`` of one table, taking and returning
    plain Python values (numbers as ``Decimal``), like ``boto3.resource("dynamodb").Table``.
    Errors are botocore's ``ClientError``; a failed condition's ``Item`` stays in DynamoDB's wire
    format (``{"N": "…"}``), as botocore leaves error responses.

    Args:
        name: the table name.
        client: a DynamoDB client to use (tests inject one); default: created on first use.
    """

    def __init__(self, name: str, client: Any = None) -> None:
        self.name = name
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3  # lazy: never at import time

                    self._client = boto3.session.Session().client("dynamodb")
        return self._client

    def _call(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        serializer, deserializer = TypeSerializer(), TypeDeserializer()
        request = dict(kwargs, TableName=self.name)
        for arg in _SERIALIZED_ARGS:
            if arg in request:
                request[arg] = {k: serializer.serialize(v) for k, v in request[arg].items()}
        answer = getattr(self.client, operation)(**request)
        for arg in ("Item", "Attributes", "LastEvaluatedKey"):
            if arg in answer:
                answer[arg] = {k: deserializer.deserialize(v) for k, v in answer[arg].items()}
        if "Items" in answer:
            answer["Items"] = [{k: deserializer.deserialize(v) for k, v in i.items()} for i in answer["Items"]]
        return answer

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("get_item", kwargs)

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("put_item", kwargs)

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("update_item", kwargs)

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("scan", kwargs)


class TableHandle:
    """``handle.table``: a :class:`Table` named ``table_name`` on one shared client; with a boto3
    ``resource`` given (tests), that resource's ``Table`` instead."""

    def __init__(self, table_name: str, resource: Any = None) -> None:
        self.table_name = table_name
        self.table: Any = resource.Table(table_name) if resource is not None else Table(table_name)
