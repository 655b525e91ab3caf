"""The job pipeline on moto for unit tests: the queue, dead-letter queue, tables and bucket that
``make run`` creates (``run.create_local_aws_resources``), the router's :class:`JobService`, and
the worker function's own ``lambda_handler`` fed by the local worker loop (``worker.poll_once``),
with SQS's clock under the test's control so visibility timeouts pass without waiting."""

from __future__ import annotations

import json
import random
from typing import Any

import boto3
import pytest
from fakes import FakeClock, FakeUpstream, config, endpoint
from run import JOBS_DLQ, create_local_aws_resources
from samlocal import ROOT, load_module
from worker import poll_once

from r1edge.jobs.runner import JobRunner
from r1edge.jobs.service import JobService
from r1edge.jobs.settings import JobSettings
from r1edge.observe.metrics import Recorder
from r1edge.routing.gateway import Gateway


class SqsClock:
    """Moto's SQS clock (milliseconds since the epoch), frozen until :meth:`advance`."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def millis(self) -> float:
        return self.now * 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JobStack:
    """Everything of one test's job pipeline; see the module docstring."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, visibility_timeout: int = 60, **settings: Any) -> None:
        self.clock = SqsClock()
        monkeypatch.setattr("moto.sqs.models.unix_time_millis", self.clock.millis)
        self.env = create_local_aws_resources(None, visibility_timeout=visibility_timeout)
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.queue_url = self.env["JOBS_QUEUE_URL"]
        self.dlq_url = self.sqs.get_queue_url(QueueName=JOBS_DLQ)["QueueUrl"]
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        base = JobSettings.from_env(self.env)
        assert base is not None
        values = {**base.__dict__, "backoff_base": 2.0, "backoff_cap": 8.0, **settings}
        self.settings = JobSettings(**values)
        self.service = JobService(self.settings)
        self.upstream = FakeUpstream()
        self.fake_clock = FakeClock()
        recorder = Recorder("worker")
        self.gateway = Gateway(
            config(endpoint("r1", "cluster"), retry={"max_attempts": 1}),
            self.upstream.upstream(),
            recorder=recorder,
            **self.fake_clock.options(),
        )
        self.runner = JobRunner(self.settings, self.gateway, rng=random.Random(7), recorder=recorder)
        module = load_module(ROOT / "functions" / "worker" / "app.py", "worker_function_under_test")
        monkeypatch.setattr(module, "runner_from_env", lambda: self.runner)
        self.handler = module.lambda_handler

    def poll(self) -> int:
        """One receive of the local worker loop through the worker function's handler."""
        return poll_once(self.sqs, self.queue_url, self.queue_arn, self.handler, wait_seconds=0)

    def drain(self, rounds: int = 10, step: float = 0.0) -> None:
        """Poll until a receive finds nothing, advancing SQS's clock ``step`` seconds between."""
        for _ in range(rounds):
            if not self.poll():
                return
            self.clock.advance(step)

    def messages(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message in a queue, visible or not (moto's backend view)."""
        from moto.sqs.models import sqs_backends

        name = queue_url.rsplit("/", 1)[-1]
        queue = sqs_backends["123456789012"]["us-east-1"].queues[name]
        return [{"body": m.body, "receive_count": m.approximate_receive_count} for m in queue._messages]

    def job_item(self, job_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=self.settings.table, Key={"id": {"S": job_id}})["Item"]
        return {k: next(iter(v.values())) for k, v in item.items()}


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A :class:`JobStack` on moto, with no ``AWS_ENDPOINT_URL*`` pointing elsewhere."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        yield JobStack(monkeypatch)


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": content}], **extra}


def tenant_app(app: Any) -> Any:
    """The app, with ``request.state.tenant`` taken from an ``x-test-tenant`` header (standing in
    for API-key authentication)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            tenant = dict(scope["headers"]).get(b"x-test-tenant")
            if tenant:
                scope.setdefault("state", {})["tenant"] = tenant.decode()
        await app(scope, receive, send)

    return wrapped


def loads(value: str) -> Any:
    return json.loads(value)
