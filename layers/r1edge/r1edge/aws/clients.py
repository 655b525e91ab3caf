"""The one place boto3 clients are made.

Every store in r1edge reaches AWS through :class:`LazyClient` (or :func:`make_client` where a
client is needed at once): the client is created on first use, never at import time (a Lambda's
cold start pays only for what a request uses; tests can start moto first), once per holder under
a lock (low-level clients are thread-safe, resources and sessions are not: boto3 guide,
"Multithreading or multiprocessing with resources"), so r1edge never uses ``boto3.resource``.

Endpoints come from the environment as botocore reads them itself — ``AWS_ENDPOINT_URL_<SERVICE>``
then ``AWS_ENDPOINT_URL`` (AWS SDKs and tools reference guide, "Service-specific endpoints") — so
a moto server locally needs no code path of its own. The region comes from ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` as usual. See docs/ARCHITECTURE.md, "AWS".
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any


def make_client(service: str, config: Mapping[str, Any] | None = None) -> Any:
    """A new boto3 low-level client for ``service`` (``"s3"``, ``"sqs"``, ``"dynamodb"``,
    ``"secretsmanager"``), on a session of its own (sessions are not thread-safe).

    Args:
        service: the boto3 service name.
        config: ``botocore.config.Config`` keyword arguments (timeouts in seconds, retries);
            default: botocore's defaults.
    """
    import boto3  # lazy: boto3 costs ~100 ms to import, and not every path needs it
    from botocore.config import Config

    return boto3.session.Session().client(service, config=Config(**config) if config else None)


class LazyClient:
    """A boto3 client created on first :meth:`get` (thread-safe), or the one injected.

    Args:
        service: the boto3 service name.
        config: ``botocore.config.Config`` keyword arguments for :func:`make_client`.
        client: a client to use instead (tests inject moto's or a stub).
    """

    def __init__(self, service: str, config: Mapping[str, Any] | None = None, client: Any = None) -> None:
        self.service = service
        self.config = config
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client, created on the first call."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.service, self.config)
        return self._client
