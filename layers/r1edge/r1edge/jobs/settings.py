"""Where jobs live and their limits: :class:`JobSettings` from the environment (:data:`ENV`), the
job statuses, and the job id format.

Statuses: ``queued`` → ``running`` → ``succeeded`` | ``failed`` (a retryable failure goes back to
``queued`` with ``last_error`` until the message's last receive). Nothing here does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from r1edge import env

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = (SUCCEEDED, FAILED)

#: Environment variables read by :meth:`JobSettings.from_env` (documented in the README).
ENV = {
    "table": env.JOBS_TABLE,
    "idempotency_table": env.IDEMPOTENCY_TABLE,
    "queue_url": env.JOBS_QUEUE_URL,
    "bucket": env.JOBS_BUCKET,
    "ttl_days": env.JOBS_TTL_DAYS,
    "max_message_bytes": env.JOBS_MAX_MESSAGE_BYTES,
    "max_receive_count": env.JOBS_MAX_RECEIVE_COUNT,
    "max_tokens": env.JOBS_MAX_TOKENS,
    "backoff_base": env.JOBS_BACKOFF_BASE,
    "backoff_cap": env.JOBS_BACKOFF_CAP,
    "idempotency_seconds": env.JOBS_IDEMPOTENCY_SECONDS,
    "deadline_margin": env.JOBS_DEADLINE_MARGIN,
}

#: SQS's default and our configured ``MaximumMessageSize`` (bytes). SQS accepts up to 1 MiB
#: (1,048,576 bytes) since August 2025; 256 KiB keeps a batch of 10 well under Lambda's 6 MB
#: invocation payload limit (see the README decisions log).
MAX_MESSAGE_BYTES = 262_144


@dataclass(frozen=True)
class JobSettings:
    """Where jobs live and their limits.

    Attributes:
        table: DynamoDB jobs table (partition key ``id``, TTL attribute ``expires_at``).
        idempotency_table: DynamoDB table of Powertools Idempotency (partition key ``id``, TTL
            attribute ``expiration``).
        queue_url: SQS job queue URL.
        bucket: S3 bucket for request bodies above the message limit and results above
            :data:`r1edge.jobs.store.MAX_INLINE_RESULT_BYTES`.
        ttl_days: job records (and their S3 objects, by lifecycle rule) expire this many days
            after submission (default 7; the jobs table's TTL attribute ``expires_at``).
        max_message_bytes: the queue's ``MaximumMessageSize`` (bytes); larger bodies go to S3.
        max_receive_count: the redrive policy's ``maxReceiveCount``: the receive after which a
            failing message goes to the dead-letter queue (default 5).
        max_tokens: per-job completion-token cap (default 32,768): a larger ``max_tokens`` is a
            400; an absent one is set to it, so a job fits the worker's deadline.
        backoff_base: seconds; first retry's visibility extension is up to this (full jitter).
        backoff_cap: seconds; no extension is longer (SQS allows up to 43,200 s).
        idempotency_seconds: how long an ``Idempotency-Key`` is remembered (default 24 h).
        deadline_margin: seconds kept back from the worker's time left to record the outcome.
    """

    table: str
    queue_url: str
    bucket: str
    idempotency_table: str = ""
    ttl_days: int = 7
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_receive_count: int = 5
    max_tokens: int = 32_768
    backoff_base: float = 30.0
    backoff_cap: float = 900.0
    idempotency_seconds: int = 86_400
    deadline_margin: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JobSettings | None:
        """Settings from :data:`ENV`; ``None`` when ``JOBS_QUEUE_URL`` or ``JOBS_TABLE`` is
        unset (jobs are off).

        Raises:
            ValueError: a numeric variable does not parse.
        """
        if not environ.get(ENV["queue_url"]) or not environ.get(ENV["table"]):
            return None
        values: dict[str, Any] = {}
        for field, var in ENV.items():
            raw = environ.get(var)
            if raw in (None, ""):
                continue
            kind = type(getattr(cls, field, "")) if field not in ("table", "queue_url", "bucket") else str
            try:
                values[field] = kind(raw)
            except ValueError:
                raise ValueError(f"{var} must be a {kind.__name__}, got {raw!r}") from None
        values.setdefault("bucket", "")
        return cls(**values)


class Clock(Protocol):
    """A wall clock: seconds since the epoch (``time.time``; injected in tests)."""

    def __call__(self) -> float: ...


def new_job_id() -> str:
    """A new job id: ``job_`` and 32 hex digits (random UUID)."""
    return f"job_{uuid.uuid4().hex}"
