"""A DynamoDB table with the resource API's calling convention (Python values in, Python values
out), on one low-level client shared by every thread.

boto3 resources and sessions are not thread-safe, low-level clients are (boto3 guide,
"Multithreading or multiprocessing with resources"), and the router calls its stores from a
thread pool (``anyio.to_thread``). Building a resource per thread would cost a session and a
service-model load per worker thread, so this adapter serializes with boto3's own
``TypeSerializer``/``TypeDeserializer`` around one client from :mod:`r1edge.aws.clients`, created
on first use under a lock. The endpoint comes from ``AWS_ENDPOINT_URL_DYNAMODB`` when set (a moto
server locally), as boto3 reads it itself. It is the one way r1edge reaches DynamoDB.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from r1edge.aws.clients import LazyClient

_SERIALIZED_ARGS = ("Key", "Item", "ExpressionAttributeValues", "ExclusiveStartKey")


class Table:
    """``get_item``, ``put_item``, ``update_item`` and ``scan`` of one table, taking and returning
    plain Python values (numbers as ``Decimal``), like ``boto3.resource("dynamodb").Table``.
    Errors are botocore's ``ClientError``; a failed condition's ``Item`` stays in DynamoDB's wire
    format (``{"N": "…"}``), as botocore leaves error responses.

    Args:
        name: the table name.
        client: the DynamoDB client: a :class:`~r1edge.aws.clients.LazyClient`, or a boto3
            low-level client (tests inject moto's); default: a ``LazyClient`` made on first use.
        config: ``botocore.config.Config`` keyword arguments (timeouts in seconds, retries) of
            the default client; ignored when ``client`` is given.
    """

    def __init__(self, name: str, client: Any = None, config: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self._lazy = client if isinstance(client, LazyClient) else LazyClient("dynamodb", config, client)

    @property
    def client(self) -> Any:
        """The low-level client, created on first use (:meth:`LazyClient.get`)."""
        return self._lazy.get()

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

    def delete_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("delete_item", kwargs)

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("scan", kwargs)
