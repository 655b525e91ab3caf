"""The worker side of jobs: :class:`JobRunner` runs one SQS record's job through the routing core
and applies the retry policy.

Retry policy (docs/ARCHITECTURE.md, Retry rules): a 5xx, 408 or 429 is retried by stretching the
message's visibility (full-jitter backoff from ``backoff_base`` to ``backoff_cap`` seconds, with
the gateway's ``Retry-After`` as a floor) until the redrive policy's last receive, where the job
is marked ``failed`` and the message goes to the dead-letter queue; any other 4xx fails the job
at once; a message that is not a job message is poison (made visible again at once, so SQS
dead-letters it after ``maxReceiveCount`` receives).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from r1edge.jobs.queue import JobQueue
from r1edge.jobs.settings import JobSettings
from r1edge.jobs.store import JobStore
from r1edge.observe import metrics
from r1edge.protocol.errors import OpenAIError, Overloaded, RateLimited, error_body
from r1edge.protocol.validation import validate_chat_request
from r1edge.resilience.retry import backoff_delay, parse_retry_after

logger = Logger(service="r1edge-jobs", child=True)


class PoisonMessage(Exception):
    """A message that is not a job message (not JSON, or without ``job_id``/``tenant``). It is
    made visible again at once and failed, so SQS moves it to the dead-letter queue after
    ``maxReceiveCount`` receives instead of looping forever."""


class RetryLater(Exception):
    """A retryable failure: the message stays in the queue and reappears after ``delay``
    seconds (``ChangeMessageVisibility``). Raised to the batch processor, which reports the
    record as a partial batch failure."""

    def __init__(self, message: str, delay: int) -> None:
        super().__init__(message)
        self.delay = delay


#: Statuses of an OpenAIError that a later attempt may fix (docs/ARCHITECTURE.md, Retry rules); any other
#: 4xx is permanent.
RETRYABLE_STATUS = frozenset({408, 429})


def is_retryable(error: OpenAIError) -> bool:
    """Whether a job that ended in ``error`` should run again later: 5xx, 408 and 429 yes;
    other 4xx (the request's own fault) no."""
    return error.status >= 500 or error.status in RETRYABLE_STATUS


def error_object(error: OpenAIError) -> dict[str, Any]:
    """The inner OpenAI error object ``{"message", "type", "param", "code"}`` of an error."""
    return error_body(error.message, error.type, error.param, error.code)["error"]


class Completer(Protocol):
    """What the runner needs of :class:`~r1edge.routing.gateway.Gateway`."""

    async def complete(
        self, request: Any, request_id: str, deadline: float | None = None, allow_degrade: bool = False
    ) -> Any: ...


@dataclass
class Outcome:
    """What happened to one record: ``succeeded``, ``failed`` (permanent), ``skipped`` (already
    finished, or no such job), or ``retry`` (left for redelivery)."""

    job_id: str | None
    result: str


class JobRunner:
    """Runs one SQS record's job (the worker's per-record logic).

    Args:
        settings: see :class:`JobSettings`.
        gateway: the routing core (:class:`~r1edge.routing.gateway.Gateway`, non-streamed).
        store, queue: default: built from ``settings``.
        rng: randomness for the backoff jitter.
        recorder: where job outcomes are counted (``r1edge_jobs{status}``, EMF ``JobOutcomes``):
            ``succeeded``, ``failed`` (permanent), ``dead_lettered`` (failed on its last receive),
            ``retried`` (left for redelivery), ``poison`` (not a job message); default: the
            process's ``worker`` recorder.
    """

    def __init__(
        self,
        settings: JobSettings,
        gateway: Completer,
        store: JobStore | None = None,
        queue: JobQueue | None = None,
        rng: random.Random | None = None,
        recorder: metrics.Recorder | None = None,
    ) -> None:
        self.recorder = recorder or metrics.default("worker")
        self.settings = settings
        self.gateway = gateway
        self.store = store or JobStore(settings)
        self.queue = queue or JobQueue(settings)
        self.rng = rng or random.Random()

    def backoff(self, receive_count: int, retry_after: float | None = None) -> int:
        """Seconds the message stays invisible before its next receive: full-jitter backoff
        (:func:`r1edge.resilience.retry.backoff_delay` with ``backoff_base``/``backoff_cap``) for retry
        number ``receive_count``, raised to the upstream's ``Retry-After`` when longer, rounded
        up to whole seconds (SQS's unit)."""
        delay = backoff_delay(receive_count, self.settings.backoff_base, self.settings.backoff_cap, self.rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return math.ceil(min(delay, 43_200))

    async def run(self, body: str, receipt_handle: str, receive_count: int, time_left: float) -> Outcome:
        """Run the job of one message. DynamoDB, S3 and SQS calls (blocking boto3) run in worker
        threads, so the records of a batch overlap.

        Args:
            body: the message body.
            receipt_handle: for ``ChangeMessageVisibility``.
            receive_count: ``ApproximateReceiveCount`` (1 on the first receive).
            time_left: seconds until the worker's invocation ends.

        Returns:
            The :class:`Outcome` (the record succeeds: SQS deletes the message).

        Raises:
            PoisonMessage: the body is not a job message (made visible again at once).
            RetryLater: a retryable failure before the last receive (message kept, visibility
                stretched), or on the last receive after the job was marked ``failed`` with the
                error (the message then goes to the dead-letter queue).
        """
        message = self._decode(body)
        if message is None:
            await asyncio.to_thread(self.queue.change_visibility, receipt_handle, 0)
            self.recorder.job_outcome("poison")
            raise PoisonMessage(f"not a job message: {body[:200]!r}")
        job_id, tenant = message["job_id"], message["tenant"]
        if not await asyncio.to_thread(self.store.start, job_id, tenant):
            logger.info("job already finished or unknown; message dropped", extra={"job_id": job_id})
            return Outcome(job_id, "skipped")
        try:
            chat = validate_chat_request(await asyncio.to_thread(self.queue.load_request, message))
            deadline = max(0.001, time_left - self.settings.deadline_margin)
            routed = await self.gateway.complete(chat, job_id, deadline)
        except OpenAIError as exc:
            return await asyncio.to_thread(self._failed, job_id, exc, receipt_handle, receive_count)
        except Exception as exc:  # anything unexpected is retried, then dead-lettered
            logger.exception("job attempt crashed", extra={"job_id": job_id})
            error = OpenAIError(
                f"The job's attempt failed: {type(exc).__name__}: {exc}", status=500, code="internal_error"
            )
            return await asyncio.to_thread(self._failed, job_id, error, receipt_handle, receive_count)
        won = await asyncio.to_thread(self.store.succeed, job_id, routed.completion)
        logger.info("job succeeded" if won else "job already finished; result dropped", extra={"job_id": job_id})
        if won:
            self.recorder.job_outcome("succeeded")
        return Outcome(job_id, "succeeded" if won else "skipped")

    def _failed(self, job_id: str, exc: OpenAIError, receipt_handle: str, receive_count: int) -> Outcome:
        error = error_object(exc)
        if not is_retryable(exc):
            self.store.fail(job_id, error)
            logger.info("job failed (permanent)", extra={"job_id": job_id, "error": error})
            self.recorder.job_outcome("failed")
            return Outcome(job_id, "failed")
        if receive_count >= self.settings.max_receive_count:
            # The last receive: record the failure now (the dead-letter queue has no consumer
            # that could), then let the message go to the dead-letter queue.
            self.store.fail(job_id, error)
            self.queue.change_visibility(receipt_handle, 0)
            logger.warning(
                "job failed after its last attempt; message to the DLQ", extra={"job_id": job_id, "error": error}
            )
            self.recorder.job_outcome("dead_lettered")
            raise RetryLater(f"job {job_id} failed {receive_count} times: {exc.message}", 0)
        self.store.retry_later(job_id, error)
        retry_after = upstream_retry_after(exc, time.time())
        delay = self.backoff(receive_count, retry_after)
        self.queue.change_visibility(receipt_handle, delay)
        logger.info("job will be retried", extra={"job_id": job_id, "delay": delay, "error": error})
        self.recorder.job_outcome("retried")
        raise RetryLater(f"job {job_id}: {exc.message}", delay)

    @staticmethod
    def _decode(body: str) -> dict[str, Any] | None:
        try:
            message = json.loads(body)
        except (ValueError, TypeError):
            return None
        if not isinstance(message, dict):
            return None
        if not isinstance(message.get("job_id"), str) or not isinstance(message.get("tenant"), str):
            return None
        return message


def upstream_retry_after(error: OpenAIError, now: float) -> float | None:
    """Seconds the gateway asked a busy job to wait (its ``Retry-After``), or ``None``: only a
    503/429 (:class:`Overloaded`, :class:`RateLimited`) carries one that counts.

    Parsed by :func:`r1edge.resilience.retry.parse_retry_after` (header names in any case;
    delay-seconds or an HTTP-date, RFC 9110 section 10.2.3, and ``retry-after-ms``). The gateway
    always sends whole seconds (``str(int)``, at least 1), so the jobs runner's former own parser
    (``float()`` of the value) gave the same answer for every value r1edge produces; it differed
    only on values r1edge never sends: a fractional or exponent form (``"1.5"``, ``"1e3"``) or
    ``"inf"`` was taken as a number there and is ``None`` here, an HTTP-date or
    ``retry-after-ms`` was ignored there and is honoured here.

    Args:
        error: the job attempt's error.
        now: wall clock, seconds since the epoch (for an HTTP-date).
    """
    if not isinstance(error, (Overloaded, RateLimited)) and error.status not in (429, 503):
        return None
    return parse_retry_after(error.headers, now)
