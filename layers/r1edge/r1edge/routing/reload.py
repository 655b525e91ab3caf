"""The router's routing config, re-read from S3 while it runs.

Powertools Parameters has no S3 provider, so :class:`S3Provider` is a small ``BaseProvider``
subclass (as in Powertools' own custom-provider example) and its cache gives the max age.
:class:`ConfigReloader` asks S3 at most once per ``max_age`` seconds; a changed document is
validated, and an invalid one is rejected with a log line naming the field while the last good
config stays in use. A store that cannot be read keeps the last good config too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import yaml
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parameters import BaseProvider

from r1edge.aws.clients import LazyClient
from r1edge.protocol.errors import ConfigError
from r1edge.routing.config import RoutingConfig, parse_config

logger = Logger(service="r1edge-router", child=True)


class S3Provider(BaseProvider):
    """Powertools Parameters provider for S3 objects; a parameter name is ``bucket/key``.

    Args:
        client: a boto3 S3 client (default: created on first use by a
            :class:`~r1edge.aws.clients.LazyClient`; endpoint from the environment, so a local
            moto server works the same).
    """

    def __init__(self, client: Any = None) -> None:
        super().__init__()
        self._s3 = LazyClient("s3", client=client)

    def _client(self) -> Any:
        return self._s3.get()

    def _get(self, name: str, **sdk_options: Any) -> str:
        bucket, _, key = name.partition("/")
        return self._client().get_object(Bucket=bucket, Key=key, **sdk_options)["Body"].read().decode("utf-8")

    def _get_multiple(self, path: str, **sdk_options: Any) -> dict[str, str]:
        """Every object under ``bucket/prefix``, keyed by its key after the prefix (UTF-8 text)."""
        bucket, _, prefix = path.partition("/")
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return {key[len(prefix) :].lstrip("/"): self._get(f"{bucket}/{key}", **sdk_options) for key in keys}


class ConfigReloader:
    """The current routing config from ``s3://bucket/key``.

    Args:
        uri: ``s3://bucket/key`` of a YAML or JSON routing config.
        max_age: seconds between reads of S3 (``R1EDGE_CONFIG_MAX_AGE``, default 60).
        environ: environment overrides applied to every version (see :func:`parse_config`).
        provider: the Parameters provider (default :class:`S3Provider`).
        clock: monotonic seconds (injected in tests).

    Raises:
        ConfigError: the first read fails or the first version is invalid (no good config yet).
    """

    def __init__(
        self,
        uri: str,
        max_age: float = 60.0,
        environ: dict[str, str] | None = None,
        provider: BaseProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
            raise ConfigError(f"routing config URI must look like s3://bucket/key, got {uri!r}")
        self.uri = uri
        self.name = f"{parsed.netloc}/{parsed.path.lstrip('/')}"
        self.max_age = max_age
        self.environ = environ
        self.provider = provider or S3Provider()
        self.clock = clock
        try:
            self._text = self._read()
        except Exception as exc:  # noqa: BLE001 - boto3's errors: report what was tried
            raise ConfigError(f"cannot read routing config {uri!r}: {exc}") from None
        self.config = self._parse(self._text)
        self._next_check = clock() + max_age

    def _read(self) -> str:
        # The reloader's own clock decides when a read is due (an injected clock in tests), so a
        # due read bypasses the provider's cache; the cache still serves any other reader.
        value = self.provider.get(self.name, max_age=int(self.max_age), force_fetch=True)
        return value if isinstance(value, str) else str(value)

    def _parse(self, text: str) -> RoutingConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"routing config {self.uri!r} is not valid YAML or JSON: {exc}") from None
        return parse_config(data, self.environ)

    @property
    def due(self) -> bool:
        """Whether ``max_age`` has passed since the last look at S3."""
        return self.clock() >= self._next_check

    def refresh(self) -> RoutingConfig:
        """Re-read S3 if due (blocking; call it in a worker thread from async code) and return
        the config to use: the new version when it changed and is valid, else the last good one."""
        if not self.due:
            return self.config
        self._next_check = self.clock() + self.max_age
        try:
            text = self._read()
        except Exception as exc:  # noqa: BLE001 - S3 down: keep serving with the last good config
            logger.warning("routing config unreadable; keeping the last good one", extra={"error": str(exc)})
            return self.config
        if text == self._text:
            return self.config
        self._text = text
        try:
            self.config = self._parse(text)
        except ConfigError as exc:
            logger.error("new routing config rejected; keeping the last good one", extra={"error": str(exc)})
            return self.config
        logger.info("routing config reloaded", extra={"uri": self.uri, "endpoints": len(self.config.endpoints)})
        return self.config
