"""A DynamoDB ``Table`` per thread, created on first use.

boto3 resources (and the sessions that make them) are not thread-safe (boto3 guide, "Multithreading
or multiprocessing with resources"), and the router calls its stores from a thread pool
(``anyio.to_thread``), so each worker thread gets its own session and ``Table``. The endpoint comes
from ``AWS_ENDPOINT_URL_DYNAMODB`` when set (a moto server locally), as boto3 reads it itself.
"""

from __future__ import annotations

import threading
from typing import Any


class TableHandle:
    """``handle.table`` is this thread's ``boto3`` ``Table`` named ``table_name``; with a
    ``resource`` given (tests), that one resource's table is shared instead."""

    def __init__(self, table_name: str, resource: Any = None) -> None:
        self.table_name = table_name
        self._resource = resource
        self._local = threading.local()

    @property
    def table(self) -> Any:
        table = getattr(self._local, "table", None)
        if table is None:
            import boto3  # lazy: never at import time

            resource = self._resource or boto3.session.Session().resource("dynamodb")
            table = self._local.table = resource.Table(self.table_name)
        return table
