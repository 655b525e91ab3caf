"""The router side of jobs: :class:`JobService` validates a submission (``POST /v1/jobs`` or
``Prefer: respond-async``), records each job ``queued`` in the jobs table and sends its message,
and reads jobs back.

A job is one chat completion request. ``max_tokens`` is capped per job (``JOBS_MAX_TOKENS``); a
submission with an ``Idempotency-Key`` goes through Powertools Idempotency on DynamoDB, scoped
per tenant (IETF draft-ietf-httpapi-idempotency-key-header): the same key and body answer the
first submission's jobs, another body is 422, a submission still in progress is 409.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from r1edge.aws.clients import make_client
from r1edge.headers import IDEMPOTENCY_KEY, RETRY_AFTER
from r1edge.jobs.queue import JobQueue
from r1edge.jobs.settings import JobSettings, new_job_id
from r1edge.jobs.store import JobStore
from r1edge.jobs.view import job_view
from r1edge.protocol.errors import InvalidRequest, OpenAIError, Overloaded, quote
from r1edge.protocol.validation import validate_chat_request

logger = Logger(service="r1edge-jobs", child=True)

#: Largest ``{"requests": [...]}`` list in one submission.
MAX_BATCH = 100
#: ``Idempotency-Key`` values: 1 to 255 visible ASCII characters.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


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
            store = DynamoDBPersistenceLayer(
                table_name=self.settings.idempotency_table, boto3_client=make_client("dynamodb")
            )
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
        if not IDEMPOTENCY_KEY_PATTERN.match(idempotency_key):
            raise InvalidRequest(
                "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                param=IDEMPOTENCY_KEY,
                code="invalid_value",
            )
        if self._idempotent is None:
            raise InvalidRequest(
                "Idempotency-Key is not supported here: no IDEMPOTENCY_TABLE is configured.", param=IDEMPOTENCY_KEY
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
                "This Idempotency-Key was already used with a different request body.", param=IDEMPOTENCY_KEY
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                param=IDEMPOTENCY_KEY,
                headers={RETRY_AFTER: "1"},
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
                    headers={RETRY_AFTER: "1"},
                ) from None
            raise Overloaded("The job queue is unavailable; nothing was queued.", headers={RETRY_AFTER: "1"}) from None
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
                f"No job found with id {quote(job_id)}.", status=404, type="invalid_request_error", code="job_not_found"
            )
        return job_view(job)
