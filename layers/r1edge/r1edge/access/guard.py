"""What the router needs to let a request in, wired from the environment.

:class:`Guard` holds the key check (:mod:`r1edge.access.keys`), the limiter
(:mod:`r1edge.access.ratelimit`) and the usage recorder (:mod:`r1edge.access.usage`), each behind a
small store interface (DynamoDB in AWS and locally, in-memory fakes in unit tests).

Authentication is on when a :class:`Guard` is given to :func:`r1edge.apps.router.create_app`, or
when ``R1EDGE_KEYS_TABLE`` is set (:meth:`Guard.from_env`; ``template.yaml`` sets it for every
deployed router, ``make run`` and ``make run-router`` always). Without either, requests act for
the tenant ``anonymous`` and no limits apply (unit tests, benchmarks of the bare router).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from r1edge.access.keys import (
    KEYS_SECRET_ENV,
    KEYS_TABLE_ENV,
    ApiKey,
    Authenticator,
    DynamoKeyStore,
    read_secret,
)
from r1edge.access.ratelimit import LIMITS_TABLE_ENV, DynamoBucketStore, Limits, RateLimiter
from r1edge.access.usage import USAGE_TABLE_ENV, DynamoUsageStore, UsageRecorder
from r1edge.protocol.errors import ConfigError

#: Environment variable that turns on logging of prompt and completion text (``true``).
LOG_CONTENT_ENV = "R1EDGE_LOG_CONTENT"


def log_content_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether prompt and completion text may be logged (``R1EDGE_LOG_CONTENT=true``; off by
    default: prompts are the users' data)."""
    environ = os.environ if environ is None else environ
    return environ.get(LOG_CONTENT_ENV, "").strip().lower() == "true"


@dataclass
class Guard:
    """What the router needs to let a request in: the key check, the limiter and the usage
    recorder (each behind a small store interface; DynamoDB in AWS and locally)."""

    authenticator: Authenticator
    limiter: RateLimiter
    usage: UsageRecorder

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Guard | None:
        """The guard described by ``R1EDGE_KEYS_TABLE``, ``R1EDGE_KEYS_SECRET``,
        ``R1EDGE_LIMITS_TABLE`` and ``R1EDGE_USAGE_TABLE``; ``None`` when the first is unset.

        Raises:
            ConfigError: the keys table is set but another of the four is not.
        """
        environ = os.environ if environ is None else environ
        table = environ.get(KEYS_TABLE_ENV)
        if not table:
            return None
        missing = [name for name in (KEYS_SECRET_ENV, LIMITS_TABLE_ENV, USAGE_TABLE_ENV) if not environ.get(name)]
        if missing:
            raise ConfigError(f"{KEYS_TABLE_ENV} is set, so API keys are on; also set {', '.join(missing)}")
        secret_name = environ[KEYS_SECRET_ENV]
        return cls(
            Authenticator(DynamoKeyStore(table), lambda: read_secret(secret_name)),
            RateLimiter(DynamoBucketStore(environ[LIMITS_TABLE_ENV])),
            UsageRecorder(DynamoUsageStore(environ[USAGE_TABLE_ENV])),
        )


def limits_of(key: ApiKey) -> Limits:
    """The request and token limits (per minute) of ``key``."""
    return Limits(key.requests_per_minute, key.tokens_per_minute)
