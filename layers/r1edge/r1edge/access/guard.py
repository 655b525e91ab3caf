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

from r1edge import env
from r1edge.access.keys import (
    ApiKey,
    Authenticator,
    DynamoKeyStore,
    read_secret,
)
from r1edge.access.ratelimit import DynamoBucketStore, Limits, RateLimiter
from r1edge.access.usage import DynamoUsageStore, UsageRecorder
from r1edge.protocol.errors import ConfigError


def log_content_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether prompt and completion text may be logged (``R1EDGE_LOG_CONTENT=true``; off by
    default: prompts are the users' data)."""
    environ = os.environ if environ is None else environ
    return environ.get(env.R1EDGE_LOG_CONTENT, "").strip().lower() == "true"


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
        table = environ.get(env.R1EDGE_KEYS_TABLE)
        if not table:
            return None
        needed = (env.R1EDGE_KEYS_SECRET, env.R1EDGE_LIMITS_TABLE, env.R1EDGE_USAGE_TABLE)
        missing = [name for name in needed if not environ.get(name)]
        if missing:
            raise ConfigError(f"{env.R1EDGE_KEYS_TABLE} is set, so API keys are on; also set {', '.join(missing)}")
        secret_name = environ[env.R1EDGE_KEYS_SECRET]
        return cls(
            Authenticator(DynamoKeyStore(table), lambda: read_secret(secret_name)),
            RateLimiter(DynamoBucketStore(environ[env.R1EDGE_LIMITS_TABLE])),
            UsageRecorder(DynamoUsageStore(environ[env.R1EDGE_USAGE_TABLE])),
        )


def limits_of(key: ApiKey) -> Limits:
    """The request and token limits (per minute) of ``key``."""
    return Limits(key.requests_per_minute, key.tokens_per_minute)
