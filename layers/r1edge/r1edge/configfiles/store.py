"""Files from S3 with a warm path that does not touch S3: an in-memory copy and a ``/tmp`` copy
(diskcache) per container, revalidated with S3 conditional GETs once older than ``max_age``, and
served stale within ``stale-if-error`` when S3 fails (RFC 5861).

I/O sits behind :class:`ObjectSource`; :class:`S3Source` is the boto3 one (client created on first
use, endpoint from the environment, so a local moto server works the same). The clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from r1edge.aws.clients import LazyClient
from r1edge.configfiles.httpcache import strong_etag
from r1edge.protocol.errors import NotFound, Overloaded, quote

logger = Logger(service="r1edge-config", child=True)


@dataclass(frozen=True)
class StoredObject:
    """One file and what HTTP needs to serve it.

    Attributes:
        body: the bytes.
        etag: our strong ETag (SHA-256 of ``body``, quoted).
        source_etag: the store's own tag (S3's ETag), for conditional GETs to it.
        last_modified: from the store.
        fetched_at: when the store last confirmed this copy (seconds since the epoch).
    """

    body: bytes
    etag: str
    source_etag: str | None
    last_modified: datetime | None
    fetched_at: float


class NotModifiedError(Exception):
    """The store's copy still matches the tag we sent."""


class SourceError(Exception):
    """The store could not answer (network, throttling, 5xx, permissions)."""


class ObjectSource(Protocol):
    """Where files come from."""

    def fetch(self, key: str, if_none_match: str | None) -> tuple[bytes, str | None, datetime | None]:
        """``(body, source_etag, last_modified)`` of ``key``.

        Raises:
            NotModifiedError: ``if_none_match`` still matches.
            NotFound: no such key.
            SourceError: any other failure.
        """
        ...


class S3Source:
    """:class:`ObjectSource` over one S3 bucket (``GetObject`` with ``IfNoneMatch``).

    Args:
        bucket: bucket name.
        client: a boto3 S3 client (default: made on first use by :class:`r1edge.aws.clients.LazyClient`).
    """

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = LazyClient("s3", client=client)

    @property
    def client(self) -> Any:
        """The S3 client, created on first use (thread-safe)."""
        return self._client.get()

    def fetch(self, key: str, if_none_match: str | None) -> tuple[bytes, str | None, datetime | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_none_match:
            params["IfNoneMatch"] = if_none_match
        try:
            response = self.client.get_object(**params)
            body = response["Body"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304 or error.get("Code") in ("304", "NotModified"):
                raise NotModifiedError from None
            if error.get("Code") in ("NoSuchKey", "404") or status == 404:
                raise NotFound(f"No config named {quote(key)}.", param=None, code="not_found") from None
            raise SourceError(f"S3 {error.get('Code')}: {error.get('Message')}") from None
        except BotoCoreError as exc:
            raise SourceError(f"S3 unreachable: {exc}") from None
        return body, response.get("ETag"), response.get("LastModified")


class ConfigStore:
    """Cached reads of one :class:`ObjectSource`.

    Args:
        source: the store.
        max_age: seconds a copy is served without asking the store.
        cache_dir: directory of the ``/tmp`` copy (diskcache, shared by the processes of a
            container); ``None``: memory only.
        size_limit: bytes the ``/tmp`` copy may use (diskcache evicts least recently used).
        clock: seconds since the epoch (injected in tests).
    """

    def __init__(
        self,
        source: ObjectSource,
        max_age: float = 60.0,
        cache_dir: str | None = None,
        size_limit: int = 256 * 2**20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.max_age = max_age
        self.clock = clock
        self._memory: dict[str, StoredObject] = {}
        self._disk: Any = None
        if cache_dir:
            import diskcache

            self._disk = diskcache.Cache(cache_dir, size_limit=size_limit)

    def _cached(self, key: str) -> StoredObject | None:
        entry = self._memory.get(key)
        if entry is None and self._disk is not None:
            entry = self._disk.get(key)
            if entry is not None:
                self._memory[key] = entry
        return entry

    def _keep(self, key: str, entry: StoredObject) -> StoredObject:
        self._memory[key] = entry
        if self._disk is not None:
            self._disk.set(key, entry)
        return entry

    def _forget(self, key: str) -> None:
        self._memory.pop(key, None)
        if self._disk is not None:
            self._disk.delete(key)

    def get(self, key: str, stale_if_error: float = 0.0) -> StoredObject:
        """The object at ``key``: the cached copy while younger than ``max_age``; else
        revalidated (a conditional GET) or fetched; on a store failure, the cached copy while
        younger than ``max_age + stale_if_error`` seconds.

        Raises:
            NotFound: the store has no such key (any cached copy is dropped).
            Overloaded: the store failed and no usable copy exists (503, ``Retry-After``).
        """
        now = self.clock()
        entry = self._cached(key)
        if entry is not None and now - entry.fetched_at < self.max_age:
            return entry
        try:
            body, source_etag, last_modified = self.source.fetch(key, entry.source_etag if entry else None)
        except NotModifiedError:
            assert entry is not None  # only a conditional GET can answer 304
            return self._keep(key, replace(entry, fetched_at=now))
        except NotFound:
            self._forget(key)
            raise
        except SourceError as exc:
            if entry is not None and now - entry.fetched_at < self.max_age + stale_if_error:
                logger.warning("store failed; serving a stale copy", extra={"key": key, "error": str(exc)})
                return entry
            logger.error("store failed and no copy is usable", extra={"key": key, "error": str(exc)})
            raise Overloaded(
                "The config store is unavailable and no cached copy is usable.", headers={"Retry-After": "5"}
            ) from None
        return self._keep(key, StoredObject(body, strong_etag(body), source_etag, last_modified, now))
