"""The jobs table (DynamoDB, through :class:`r1edge.aws.ddb.Table`) and S3 for results too big for
an item.

Every state change is a conditional write, so a message delivered twice never produces a second,
different result. Times stored in job records are seconds since the epoch (millisecond
precision); :meth:`JobStore.get` returns numbers as floats.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

from r1edge.aws.clients import LazyClient
from r1edge.aws.ddb import Table
from r1edge.jobs.settings import FAILED, QUEUED, RUNNING, SUCCEEDED, Clock, JobSettings

#: Largest result kept inline in a DynamoDB item (bytes); DynamoDB's item limit is 400 KB.
MAX_INLINE_RESULT_BYTES = 300_000


def _dec(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    """A job item with its numbers (``Decimal``, as DynamoDB gives them) as floats."""
    return {key: float(value) if isinstance(value, Decimal) else value for key, value in item.items()}


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
        dynamodb: a low-level DynamoDB client for the table (default: created on first use by
            :class:`r1edge.aws.ddb.Table`).
        s3: an S3 client (default: created on first use, :class:`r1edge.aws.clients.LazyClient`).
        clock: wall clock, seconds since the epoch (injected in tests).
    """

    def __init__(self, settings: JobSettings, dynamodb: Any = None, s3: Any = None, clock: Clock = time.time) -> None:
        self.settings = settings
        self.table = Table(settings.table, client=dynamodb)
        self._s3 = LazyClient("s3", client=s3)
        self.clock = clock

    @property
    def s3(self) -> Any:
        """The S3 client (created on first use)."""
        return self._s3.get()

    def create(self, job_id: str, tenant: str, model: str, request_id: str) -> dict[str, Any]:
        """Record a new ``queued`` job and return its item (plain values, numbers as floats).

        Raises:
            botocore ClientError: ``ConditionalCheckFailedException`` if the id exists.
        """
        now = self.clock()
        item = {
            "id": job_id,
            "tenant": tenant,
            "status": QUEUED,
            "model": model,
            "request_id": request_id,
            "attempts": Decimal(0),
            "created_at": _dec(now),
            "expires_at": Decimal(int(now + self.settings.ttl_days * 86_400)),
        }
        self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(id)")
        return _plain(item)

    def delete(self, job_id: str) -> None:
        """Remove a job record (only for a submission whose message could not be sent)."""
        self.table.delete_item(Key={"id": job_id})

    def get(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """The job's item as plain values, with ``response`` loaded from S3 when stored there;
        ``None`` when absent or owned by another tenant (``tenant`` given)."""
        found = self.table.get_item(Key={"id": job_id}, ConsistentRead=True)
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
            self.table.update_item(
                Key={"id": job_id},
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
                ":running": RUNNING,
                ":now": _dec(self.clock()),
                ":one": Decimal(1),
                ":tenant": tenant,
                ":ok": SUCCEEDED,
                ":failed": FAILED,
            },
            "attribute_exists(id) AND tenant = :tenant AND #s <> :ok AND #s <> :failed",
        )

    def retry_later(self, job_id: str, error: dict[str, Any]) -> bool:
        """Back to ``queued`` with ``last_error`` (an OpenAI error object) after a retryable
        failure; ``False`` when the job already finished."""
        return self._update(
            job_id,
            "SET #s = :queued, last_error = :e",
            {":queued": QUEUED, ":e": json.dumps(error), ":ok": SUCCEEDED, ":failed": FAILED},
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
            {":ok": SUCCEEDED, ":failed": FAILED, ":now": _dec(self.clock()), ":r": value},
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
            {":ok": SUCCEEDED, ":failed": FAILED, ":now": _dec(self.clock()), ":e": json.dumps(error)},
            "attribute_exists(id) AND #s <> :ok AND #s <> :failed",
            {"#e": "error"},
        )
