"""Queued jobs: batch work submitted to the router, run later by the worker through the same
routing core.

A job is one chat completion request. ``POST /v1/jobs`` records it in the jobs table (status
``queued``) and sends a message to the job queue (SQS standard queue with a dead-letter queue);
the worker (functions/worker) takes the message, runs the request through
:class:`~r1edge.routing.gateway.Gateway` and writes the result to the job record with a conditional write,
so a message delivered twice never produces a second, different result. Statuses:
``queued`` → ``running`` → ``succeeded`` | ``failed`` (a retryable failure goes back to ``queued``
with ``last_error`` until the message's last receive).

Pieces, each small and swappable in tests:

- :class:`JobSettings`: names and limits, from the environment (:data:`ENV`).
- :class:`JobStore`: the DynamoDB jobs table (conditional writes, TTL) and S3 for results too big
  for an item.
- :class:`JobQueue`: SQS, with request bodies above the message limit in S3 and a pointer in the
  message.
- :class:`JobService`: submission (validation, ``max_tokens`` cap, idempotency keys through
  Powertools Idempotency on DynamoDB, scoped per tenant) and reads.
- :class:`JobRunner`: the worker's per-record logic (retry/backoff through visibility timeouts,
  permanent failures, the last receive before the dead-letter queue).

Times stored in job records are seconds since the epoch (floats, millisecond precision); the API
shows them as integer seconds, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from r1edge.observe import metrics
from r1edge.protocol.errors import InvalidRequest, OpenAIError, Overloaded, RateLimited, error_body
from r1edge.protocol.validation import validate_chat_request
from r1edge.resilience.retry import backoff_delay

logger = Logger(service="r1edge-jobs", child=True)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = (SUCCEEDED, FAILED)

#: Environment variables read by :meth:`JobSettings.from_env` (documented in the README).
ENV = {
    "table": "JOBS_TABLE",
    "idempotency_table": "IDEMPOTENCY_TABLE",
    "queue_url": "JOBS_QUEUE_URL",
    "bucket": "JOBS_BUCKET",
    "ttl_days": "JOBS_TTL_DAYS",
    "max_message_bytes": "JOBS_MAX_MESSAGE_BYTES",
    "max_receive_count": "JOBS_MAX_RECEIVE_COUNT",
    "max_tokens": "JOBS_MAX_TOKENS",
    "backoff_base": "JOBS_BACKOFF_BASE",
    "backoff_cap": "JOBS_BACKOFF_CAP",
    "idempotency_seconds": "JOBS_IDEMPOTENCY_SECONDS",
    "deadline_margin": "JOBS_DEADLINE_MARGIN",
}

#: SQS's default and our configured ``MaximumMessageSize`` (bytes). SQS accepts up to 1 MiB
#: (1,048,576 bytes) since August 2025; 256 KiB keeps a batch of 10 well under Lambda's 6 MB
#: invocation payload limit (see the README decisions log).
MAX_MESSAGE_BYTES = 262_144
#: Largest result kept inline in a DynamoDB item (bytes); DynamoDB's item limit is 400 KB.
MAX_INLINE_RESULT_BYTES = 300_000
#: Largest ``{"requests": [...]}`` list in one submission.
MAX_BATCH = 100
#: ``Idempotency-Key`` values: 1 to 255 visible ASCII characters.
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class JobSettings:
    """Where jobs live and their limits.

    Attributes:
        table: DynamoDB jobs table (partition key ``id``, TTL attribute ``expires_at``).
        idempotency_table: DynamoDB table of Powertools Idempotency (partition key ``id``, TTL
            attribute ``expiration``).
        queue_url: SQS job queue URL.
        bucket: S3 bucket for request bodies above the message limit and results above
            :data:`MAX_INLINE_RESULT_BYTES`.
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
    def __call__(self) -> float: ...


def new_job_id() -> str:
    """A new job id: ``job_`` and 32 hex digits (random UUID)."""
    return f"job_{uuid.uuid4().hex}"


_CLIENT_LOCK = threading.Lock()


def _boto(service: str) -> Any:
    """A boto3 client, created lazily (endpoints come from ``AWS_ENDPOINT_URL_<SERVICE>``).
    Creating clients from boto3's default session is not thread-safe; using them is."""
    import boto3

    with _CLIENT_LOCK:
        return boto3.client(service)


def _dec(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))


class JobStore:
    """The jobs table (DynamoDB) plus S3 for large results.

    Item: ``id`` (S), ``tenant``, ``status``, ``model``, ``attempts`` (N), ``created_at``,
    ``started_at``, ``completed_at`` (N, epoch seconds), ``last_error`` / ``error`` (S, JSON of
    an OpenAI error object), ``response`` (S, the chat completion JSON) or ``response_s3`` (S, the
    S3 key), ``expires_at`` (N, epoch seconds: the table's TTL attribute).

    Every state change is a conditional write: nothing moves a job out of ``succeeded`` or
    ``failed``, so the first result recorded is the only one.

    Args:
        settings: table and bucket names, TTL.
        dynamodb, s3: boto3 clients (default: created on first use).
        clock: wall clock, seconds since the epoch (injected in tests).
    """

    def __init__(self, settings: JobSettings, dynamodb: Any = None, s3: Any = None, clock: Clock = time.time) -> None:
        self.settings = settings
        self._dynamodb = dynamodb
        self._s3 = s3
        self.clock = clock

    @property
    def dynamodb(self) -> Any:
        if self._dynamodb is None:
            client = _boto("dynamodb")
            self._dynamodb = self._dynamodb or client
        return self._dynamodb

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = _boto("s3")
        return self._s3

    def create(self, job_id: str, tenant: str, model: str, request_id: str) -> dict[str, Any]:
        """Record a new ``queued`` job and return its item (plain values).

        Raises:
            botocore ClientError: ``ConditionalCheckFailedException`` if the id exists.
        """
        now = self.clock()
        item = {
            "id": {"S": job_id},
            "tenant": {"S": tenant},
            "status": {"S": QUEUED},
            "model": {"S": model},
            "request_id": {"S": request_id},
            "attempts": {"N": "0"},
            "created_at": {"N": str(_dec(now))},
            "expires_at": {"N": str(int(now + self.settings.ttl_days * 86_400))},
        }
        self.dynamodb.put_item(TableName=self.settings.table, Item=item, ConditionExpression="attribute_not_exists(id)")
        return _plain(item)

    def delete(self, job_id: str) -> None:
        """Remove a job record (only for a submission whose message could not be sent)."""
        self.dynamodb.delete_item(TableName=self.settings.table, Key={"id": {"S": job_id}})

    def get(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """The job's item as plain values, with ``response`` loaded from S3 when stored there;
        ``None`` when absent or owned by another tenant (``tenant`` given)."""
        found = self.dynamodb.get_item(TableName=self.settings.table, Key={"id": {"S": job_id}}, ConsistentRead=True)
        item = found.get("Item")
        if item is None:
            return None
        job = _plain(item)
        if tenant is not None and job.get("tenant") != tenant:
            return None
        if "response_s3" in job:
            obj = self.s3.get_object(Bucket=self.settings.bucket, Key=job["response_s3"])
            job["response"] = obj["Body"].read().decode("utf-8")
        return job

    def _update(
        self,
        job_id: str,
        expression: str,
        values: dict[str, Any],
        condition: str,
        names: dict[str, str] | None = None,
    ) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.dynamodb.update_item(
                TableName=self.settings.table,
                Key={"id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def start(self, job_id: str, tenant: str) -> bool:
        """Mark the job ``running`` and count the attempt; ``False`` when the job is missing,
        another tenant's, or already finished (nothing to do)."""
        return self._update(
            job_id,
            "SET #s = :running, started_at = :now ADD attempts :one",
            {
                ":running": {"S": RUNNING},
                ":now": {"N": str(_dec(self.clock()))},
                ":one": {"N": "1"},
                ":tenant": {"S": tenant},
                ":ok": {"S": SUCCEEDED},
                ":failed": {"S": FAILED},
            },
            "attribute_exists(id) AND tenant = :tenant AND #s <> :ok AND #s <> :failed",
        )

    def retry_later(self, job_id: str, error: dict[str, Any]) -> bool:
        """Back to ``queued`` with ``last_error`` (an OpenAI error object) after a retryable
        failure; ``False`` when the job already finished."""
        return self._update(
            job_id,
            "SET #s = :queued, last_error = :e",
            {
                ":queued": {"S": QUEUED},
                ":e": {"S": json.dumps(error)},
                ":ok": {"S": SUCCEEDED},
                ":failed": {"S": FAILED},
            },
            "attribute_exists(id) AND #s <> :ok AND #s <> :failed",
        )

    def succeed(self, job_id: str, completion: dict[str, Any]) -> bool:
        """Record the answer, once: ``True`` when this call's result is the job's result,
        ``False`` when the job had already finished (the caller's result is dropped, and so is
        its S3 object). Results over :data:`MAX_INLINE_RESULT_BYTES` go to S3 under a key unique
        to this attempt, so a losing attempt cannot overwrite the winner's object."""
        text = json.dumps(completion, ensure_ascii=False)
        key = None
        if len(text.encode("utf-8")) > MAX_INLINE_RESULT_BYTES:
            key = f"results/{job_id}/{uuid.uuid4().hex}.json"
            self.s3.put_object(
                Bucket=self.settings.bucket, Key=key, Body=text.encode("utf-8"), ContentType="application/json"
            )
            field, value = "response_s3", key
        else:
            field, value = "#r", text
        won = self._update(
            job_id,
            f"SET #s = :ok, completed_at = :now, {field} = :r REMOVE last_error",
            {
                ":ok": {"S": SUCCEEDED},
                ":failed": {"S": FAILED},
                ":now": {"N": str(_dec(self.clock()))},
                ":r": {"S": value},
            },
            "attribute_exists(id) AND #s <> :ok AND #s <> :failed",
            {"#r": "response"} if key is None else None,
        )
        if not won and key is not None:
            self.s3.delete_object(Bucket=self.settings.bucket, Key=key)
        return won

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        """Mark the job ``failed`` with ``error`` (an OpenAI error object), once; ``False`` when
        it had already finished."""
        return self._update(
            job_id,
            "SET #s = :failed, completed_at = :now, #e = :e REMOVE last_error",
            {
                ":ok": {"S": SUCCEEDED},
                ":failed": {"S": FAILED},
                ":now": {"N": str(_dec(self.clock()))},
                ":e": {"S": json.dumps(error)},
            },
            "attribute_exists(id) AND #s <> :ok AND #s <> :failed",
            {"#e": "error"},
        )


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, typed in item.items():
        ((kind, value),) = typed.items()
        out[key] = float(value) if kind == "N" else value
    return out


class JobQueue:
    """The job queue (SQS). A message is ``{"job_id", "tenant", "request"}``, or, when that is
    over ``max_message_bytes`` (UTF-8), ``{"job_id", "tenant", "request_s3": key}`` with the
    request in S3 (the pattern of the Amazon SQS Extended Client Library).

    Args:
        settings: queue URL, bucket, message limit.
        sqs, s3: boto3 clients (default: created on first use).
    """

    def __init__(self, settings: JobSettings, sqs: Any = None, s3: Any = None) -> None:
        self.settings = settings
        self._sqs = sqs
        self._s3 = s3

    @property
    def sqs(self) -> Any:
        if self._sqs is None:
            self._sqs = _boto("sqs")
        return self._sqs

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = _boto("s3")
        return self._s3

    def message_body(self, job_id: str, tenant: str, request: dict[str, Any]) -> str:
        """The message text for a job, storing the request in S3 first when it is too big."""
        body = json.dumps({"job_id": job_id, "tenant": tenant, "request": request}, ensure_ascii=False)
        if len(body.encode("utf-8")) <= self.settings.max_message_bytes:
            return body
        if not self.settings.bucket:
            raise InvalidRequest(
                f"The request is over the queue's message limit of {self.settings.max_message_bytes} bytes "
                "and no JOBS_BUCKET is configured for larger ones.",
                code="request_too_large",
                status=413,
            )
        key = f"requests/{job_id}.json"
        self.s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=json.dumps(request, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        return json.dumps({"job_id": job_id, "tenant": tenant, "request_s3": key})

    def send(self, body: str) -> str:
        """Send a message built by :meth:`message_body`; returns the SQS message id."""
        sent = self.sqs.send_message(QueueUrl=self.settings.queue_url, MessageBody=body)
        return str(sent["MessageId"])

    def load_request(self, message: dict[str, Any]) -> dict[str, Any]:
        """The chat request of a decoded message (read from S3 for a pointer).

        Raises:
            InvalidRequest: the message has neither ``request`` nor a readable ``request_s3``.
        """
        if isinstance(message.get("request"), dict):
            return message["request"]
        key = message.get("request_s3")
        if not isinstance(key, str):
            raise InvalidRequest("The job message carries no request.", code="invalid_job_message")
        from botocore.exceptions import ClientError

        try:
            raw = self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise InvalidRequest(
                f"The job's request body is gone from S3 ({key}): {exc}.", code="invalid_job_message"
            ) from None
        return json.loads(raw)

    def depth(self) -> int | None:
        """Messages waiting in the queue (SQS ``ApproximateNumberOfMessages``), or ``None`` when
        the queue cannot be read (logged; a metric is not worth failing a batch for)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.settings.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            return int(attributes["ApproximateNumberOfMessages"])
        except (BotoCoreError, ClientError, KeyError, ValueError) as exc:
            logger.warning("queue depth unreadable", extra={"error": str(exc)})
            return None

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        """``ChangeMessageVisibility``: the message reappears ``seconds`` from now (0 to
        43,200, the SQS maximum)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url,
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(43_200, int(seconds))),
            )
        except (BotoCoreError, ClientError) as exc:
            # Not fatal: the message then reappears after the queue's own visibility timeout.
            logger.warning("could not change the message's visibility", extra={"error": str(exc)})


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The API object of a job item: ``{"id", "object": "job", "status", "model", "attempts",
    "created_at", "started_at", "completed_at", "response", "error", "last_error"}`` (times as
    integer epoch seconds or ``null``; ``response`` is the chat completion, ``error`` an OpenAI
    error object ``{"message", "type", "param", "code"}``)."""

    def when(name: str) -> int | None:
        value = job.get(name)
        return int(value) if value is not None else None

    def loads(name: str) -> Any:
        value = job.get(name)
        return json.loads(value) if isinstance(value, str) else None

    return {
        "id": job["id"],
        "object": "job",
        "status": job["status"],
        "model": job.get("model"),
        "attempts": int(job.get("attempts") or 0),
        "created_at": when("created_at"),
        "started_at": when("started_at"),
        "completed_at": when("completed_at"),
        "response": loads("response") if job["status"] == SUCCEEDED else None,
        "error": loads("error") if job["status"] == FAILED else None,
        "last_error": loads("last_error") if job["status"] not in TERMINAL else None,
    }


class IdempotencyConflict(OpenAIError):
    """409 ``idempotency_key_in_use``: a submission with this ``Idempotency-Key`` is still being
    recorded (IETF draft-ietf-httpapi-idempotency-key-header, section 2.7)."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_in_use"


class IdempotencyMismatch(OpenAIError):
    """422 ``idempotency_key_reused``: this ``Idempotency-Key`` was used with a different body
    (IETF draft-ietf-httpapi-idempotency-key-header, section 2.7)."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class JobsDisabled(OpenAIError):
    """404: this deployment has no job queue configured."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


def parse_submission(body: Any, max_tokens_cap: int) -> tuple[list[dict[str, Any]], bool]:
    """Validate a ``POST /v1/jobs`` body: a chat completion request, or ``{"requests": [...]}``
    with 1 to :data:`MAX_BATCH` of them. Returns the requests (``max_tokens`` set to the cap when
    absent, ``stream`` removed) and whether it was a list.

    Raises:
        InvalidRequest: ``param`` names the field at fault (``requests[3].messages``, ...);
            ``stream: true`` (a job's answer is stored whole); ``max_tokens`` or
            ``max_completion_tokens`` over ``max_tokens_cap``.
    """
    if isinstance(body, dict) and "requests" in body and "messages" not in body:
        requests = body["requests"]
        if not isinstance(requests, list) or not requests:
            raise InvalidRequest(
                "'requests' must be a non-empty array of chat completion requests.",
                param="requests",
                code="invalid_type",
            )
        if len(requests) > MAX_BATCH:
            raise InvalidRequest(
                f"'requests' holds {len(requests)} requests; at most {MAX_BATCH} fit in one submission.",
                param="requests",
                code="too_many_requests",
            )
        return [_job_request(r, max_tokens_cap, f"requests[{i}].") for i, r in enumerate(requests)], True
    return [_job_request(body, max_tokens_cap, "")], False


def _job_request(body: Any, cap: int, prefix: str) -> dict[str, Any]:
    try:
        chat = validate_chat_request(body)
    except InvalidRequest as exc:
        exc.param = prefix + exc.param if exc.param else (prefix.rstrip(".") or None)
        raise
    if chat.stream:
        raise InvalidRequest(
            "A job's answer is stored whole: 'stream' must be false or absent.",
            param=prefix + "stream",
            code="invalid_value",
        )
    request = {k: v for k, v in chat.body.items() if k not in ("stream", "stream_options")}
    if chat.max_tokens is not None and chat.max_tokens > cap:
        name = "max_completion_tokens" if "max_completion_tokens" in request else "max_tokens"
        raise InvalidRequest(
            f"'{name}' is {chat.max_tokens}; a job may ask for at most {cap} tokens (JOBS_MAX_TOKENS).",
            param=prefix + name,
            code="invalid_value",
        )
    if chat.max_tokens is None:
        request["max_tokens"] = cap
    return request


class _InProgressContext:
    """What Powertools Idempotency reads from a Lambda context: an in-progress record older than
    this (milliseconds) is taken as abandoned (a router that died mid-submission), so the key is
    usable again instead of answering 409 until the record expires."""

    def __init__(self, millis: int) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


class JobService:
    """Submit and read jobs (the router side).

    Args:
        settings: see :class:`JobSettings`.
        store, queue: default: built from ``settings``.
        idempotency_store: a Powertools persistence layer (default:
            ``DynamoDBPersistenceLayer(settings.idempotency_table)`` when that is set).
        in_progress_seconds: seconds after which an unfinished submission's idempotency record
            counts as abandoned (default 30).
    """

    def __init__(
        self,
        settings: JobSettings,
        store: JobStore | None = None,
        queue: JobQueue | None = None,
        idempotency_store: Any = None,
        in_progress_seconds: int = 30,
    ) -> None:
        self.settings = settings
        self.store = store or JobStore(settings)
        self.queue = queue or JobQueue(settings)
        self._idempotency_store = idempotency_store
        self._in_progress_seconds = in_progress_seconds
        self._idempotent_function: Callable[..., dict[str, Any]] | None = None
        self._lock = threading.Lock()

    @property
    def _idempotent(self) -> Callable[..., dict[str, Any]] | None:
        """The Powertools-wrapped submission, built on first use (its DynamoDB client too, so a
        router that never sees an ``Idempotency-Key`` never creates one); ``None`` without an
        idempotency table."""
        with self._lock:
            if self._idempotent_function is None:
                self._idempotent_function = self._build_idempotent()
            return self._idempotent_function

    def _build_idempotent(self) -> Callable[..., dict[str, Any]] | None:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        store = self._idempotency_store
        if store is None and self.settings.idempotency_table:
            store = DynamoDBPersistenceLayer(table_name=self.settings.idempotency_table, boto3_client=_boto("dynamodb"))
        if store is None:
            return None
        config = IdempotencyConfig(
            event_key_jmespath="[tenant, key]",
            payload_validation_jmespath="body_sha256",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=self.settings.idempotency_seconds,
            lambda_context=_InProgressContext(self._in_progress_seconds * 1000),  # type: ignore[arg-type]
        )
        return idempotent_function(
            data_keyword_argument="submission",
            persistence_store=store,
            config=config,
            key_prefix="r1edge-jobs",  # the same key in every router function (stream, buffered)
        )(self._submit_recorded)

    def submit(
        self,
        tenant: str,
        body: Any,
        request_id: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Validate and enqueue a submission (blocking: call from a worker thread).

        Args:
            tenant: the submitting tenant (:func:`r1edge.protocol.web.tenant`).
            body: the decoded JSON body (a chat request or ``{"requests": [...]}``).
            request_id: the HTTP request's id (kept on each job).
            idempotency_key: the ``Idempotency-Key`` header, if any.

        Returns:
            A job object (:func:`job_view`), or ``{"object": "list", "data": [job, ...]}``.

        Raises:
            InvalidRequest: see :func:`parse_submission`; a malformed ``Idempotency-Key``.
            IdempotencyMismatch: 422, the key was used with another body by this tenant.
            IdempotencyConflict: 409, the first submission with this key is still in progress.
            Overloaded: the queue did not take the message (503; nothing was recorded).
        """
        requests, many = parse_submission(body, self.settings.max_tokens)
        if idempotency_key is None:
            return self._enqueue(tenant, requests, many, request_id)
        if not IDEMPOTENCY_KEY.match(idempotency_key):
            raise InvalidRequest(
                "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                param="Idempotency-Key",
                code="invalid_value",
            )
        if self._idempotent is None:
            raise InvalidRequest(
                "Idempotency-Key is not supported here: no IDEMPOTENCY_TABLE is configured.", param="Idempotency-Key"
            )
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyValidationError,
        )

        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        submission = {
            "tenant": tenant,
            "key": idempotency_key,
            "body_sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            "requests": requests,
            "many": many,
            "request_id": request_id,
        }
        try:
            return self._idempotent(submission=submission)
        except IdempotencyValidationError:
            raise IdempotencyMismatch(
                "This Idempotency-Key was already used with a different request body.", param="Idempotency-Key"
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                param="Idempotency-Key",
                headers={"Retry-After": "1"},
            ) from None

    def _submit_recorded(self, submission: dict[str, Any]) -> dict[str, Any]:
        return self._enqueue(submission["tenant"], submission["requests"], submission["many"], submission["request_id"])

    def _enqueue(self, tenant: str, requests: list[dict[str, Any]], many: bool, request_id: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        jobs = []
        created: list[str] = []
        try:
            for request in requests:
                job_id = new_job_id()
                message = self.queue.message_body(job_id, tenant, request)
                job = self.store.create(job_id, tenant, str(request.get("model") or "auto"), request_id)
                created.append(job_id)
                self.queue.send(message)
                jobs.append(job)
        except (BotoCoreError, ClientError) as exc:
            logger.error("job submission failed", extra={"error": str(exc), "request_id": request_id})
            for job_id in created[len(jobs) :]:
                self.store.delete(job_id)
            if jobs:
                # Earlier jobs of this list are queued and will run: report what happened.
                raise Overloaded(
                    f"Only {len(jobs)} of {len(requests)} jobs were queued ({', '.join(j['id'] for j in jobs)}); "
                    "the queue refused the rest. Submit the remaining requests again.",
                    headers={"Retry-After": "1"},
                ) from None
            raise Overloaded(
                "The job queue is unavailable; nothing was queued.", headers={"Retry-After": "1"}
            ) from None
        for job in jobs:
            logger.info("job queued", extra={"job_id": job["id"], "tenant": tenant, "request_id": request_id})
        views = [job_view(j) for j in jobs]
        return {"object": "list", "data": views} if many else views[0]

    def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        """The job object (:func:`job_view`) of ``tenant``'s job (blocking).

        Raises:
            NotFound-like OpenAIError (404 ``job_not_found``): no such job for this tenant (a
                job of another tenant is not revealed).
        """
        job = self.store.get(job_id, tenant) if job_id.startswith("job_") else None
        if job is None:
            raise OpenAIError(
                f"No job found with id '{job_id}'.", status=404, type="invalid_request_error", code="job_not_found"
            )
        return job_view(job)


# --- the worker side ---------------------------------------------------------------------------


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
        retry_after = _retry_after(exc)
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


def _retry_after(exc: OpenAIError) -> float | None:
    if not isinstance(exc, (Overloaded, RateLimited)) and exc.status not in (429, 503):
        return None
    value = exc.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
