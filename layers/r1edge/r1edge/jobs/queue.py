"""The job queue (SQS), with request bodies above the message limit in S3 and a pointer in the
message (the pattern of the Amazon SQS Extended Client Library).

A message is ``{"job_id", "tenant", "request"}`` or ``{"job_id", "tenant", "request_s3": key}``;
the worker stretches a message's visibility to back off (``ChangeMessageVisibility``, 0 to
43,200 seconds).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger

from r1edge.aws.clients import LazyClient
from r1edge.jobs.settings import JobSettings
from r1edge.protocol.errors import InvalidRequest

logger = Logger(service="r1edge-jobs", child=True)


class JobQueue:
    """The job queue (SQS). A message is ``{"job_id", "tenant", "request"}``, or, when that is
    over ``max_message_bytes`` (UTF-8), ``{"job_id", "tenant", "request_s3": key}`` with the
    request in S3 (the pattern of the Amazon SQS Extended Client Library).

    Args:
        settings: queue URL, bucket, message limit.
        sqs, s3: boto3 clients (default: created on first use, :class:`r1edge.aws.clients.LazyClient`).
    """

    def __init__(self, settings: JobSettings, sqs: Any = None, s3: Any = None) -> None:
        self.settings = settings
        self._sqs = LazyClient("sqs", client=sqs)
        self._s3 = LazyClient("s3", client=s3)

    @property
    def sqs(self) -> Any:
        """The SQS client (created on first use)."""
        return self._sqs.get()

    @property
    def s3(self) -> Any:
        """The S3 client (created on first use)."""
        return self._s3.get()

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
