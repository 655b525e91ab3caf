"""The job worker on one machine: polls the local job queue and feeds what it receives to the
worker function's own ``lambda_handler`` (functions/worker/app.py) as SQS events, the way
Lambda's event source mapping does — including ``ReportBatchItemFailures``: messages of records
not listed in ``batchItemFailures`` are deleted, the others stay for redelivery.

    python infra/local/worker.py      # environment: R1EDGE_CONFIG, JOBS_*, AWS_ENDPOINT_URL_*

``make run`` starts it beside the router. It stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Messages per receive (the event source mapping's BatchSize in template.yaml).
BATCH_SIZE = 10
#: Long-poll wait per receive, seconds (SQS allows up to 20).
WAIT_SECONDS = 1


def load_handler() -> Any:
    """The worker function's ``lambda_handler``, imported by path as Lambda would."""
    spec = importlib.util.spec_from_file_location("worker_function", ROOT / "functions" / "worker" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


class Context:
    """What the handler reads from a Lambda context; the time left counts down from
    ``timeout`` seconds (the function's ``Timeout``)."""

    function_name = "r1edge-worker-local"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:r1edge-worker-local"

    def __init__(self, timeout: float = 900.0) -> None:
        self.deadline = time.monotonic() + timeout
        self.aws_request_id = os.urandom(8).hex()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS event (Lambda's ``Records`` shape) from ``ReceiveMessage`` results."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def poll_once(
    sqs: Any, queue_url: str, queue_arn: str, handler: Any, timeout: float = 900.0, wait_seconds: int = WAIT_SECONDS
) -> int:
    """Receive up to :data:`BATCH_SIZE` messages (long-polling ``wait_seconds``), run the handler
    on them with ``timeout`` seconds to spend, delete the ones it did not report as failures;
    returns how many were received."""
    received = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=BATCH_SIZE,
        WaitTimeSeconds=wait_seconds,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    if not received:
        return 0
    region = queue_arn.split(":")[3]
    result = handler(sqs_event(received, queue_arn, region), Context(timeout))
    failed = {item["itemIdentifier"] for item in (result or {}).get("batchItemFailures", [])}
    done = [m for m in received if m["MessageId"] not in failed]
    if done:
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
        )
    return len(received)


def main() -> int:
    import boto3

    queue_url = os.environ["JOBS_QUEUE_URL"]
    sqs = boto3.client("sqs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    handler = load_handler()
    stopping = SimpleNamespace(flag=False)

    def stop(signum: int, frame: object) -> None:
        stopping.flag = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.flag:
        try:
            poll_once(sqs, queue_url, queue_arn, handler)
        except Exception as exc:  # noqa: BLE001 - the local stack's worker keeps polling, as Lambda would
            print(f"[r1edge] job worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
