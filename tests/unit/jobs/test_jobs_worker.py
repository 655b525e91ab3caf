"""The template's queue, tables and event source mapping against what ``make run`` creates; the job
settings and the visibility backoff. The worker function run as ``sam local invoke`` would run it
(against a fault-injecting upstream on a real socket) is in
tests/integration/test_jobs_worker_invoke.py."""

from __future__ import annotations

import random

import boto3
import pytest
from moto import mock_aws
from run import (
    IDEMPOTENCY_TABLE,
    JOBS_MAX_RECEIVE_COUNT,
    JOBS_QUEUE_ATTRIBUTES,
    JOBS_TABLE,
    create_local_aws_resources,
)
from samlocal import load_template
from worker import BATCH_SIZE

from r1edge.jobs.runner import JobRunner
from r1edge.jobs.settings import MAX_MESSAGE_BYTES, JobSettings

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]


def test_the_queue_is_what_make_run_creates_and_what_the_worker_expects():
    queue = RESOURCES["JobQueue"]["Properties"]
    for name, value in JOBS_QUEUE_ATTRIBUTES.items():
        assert str(queue[name]) == value, name
    assert queue["MaximumMessageSize"] == MAX_MESSAGE_BYTES == 262_144  # SQS allows 1 KiB to 1 MiB
    assert (
        queue["RedrivePolicy"]["maxReceiveCount"]
        == JOBS_MAX_RECEIVE_COUNT
        == JobSettings("t", "q", "b").max_receive_count
    )
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["JobDeadLetterQueue", "Arn"]}
    worker = RESOURCES["WorkerFunction"]["Properties"]
    # AWS: the visibility timeout must be at least the function timeout; six times is the advice
    assert queue["VisibilityTimeout"] == 6 * worker["Timeout"] == 5400
    env = worker["Environment"]["Variables"]
    assert env["JOBS_MAX_RECEIVE_COUNT"] == str(JOBS_MAX_RECEIVE_COUNT)
    assert "Events" not in worker  # SAM's SQS event would attach a managed policy on every queue
    mapping = RESOURCES["WorkerJobsEventSource"]
    assert mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    assert mapping["Properties"]["FunctionName"] == {"Ref": "WorkerFunction"}
    assert mapping["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["JobQueue", "Arn"]}
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["Properties"]["BatchSize"] == BATCH_SIZE
    # the per-job deadline (time left minus the margin) stays under the function timeout
    settings = JobSettings("t", "q", "b")
    assert 0 < settings.deadline_margin < worker["Timeout"]


@pytest.mark.parametrize(
    ("resource", "name", "ttl"),
    [("JobsTable", JOBS_TABLE, "expires_at"), ("IdempotencyTable", IDEMPOTENCY_TABLE, "expiration")],
)
def test_tables_match_the_local_ones(monkeypatch, resource, name, ttl):
    props = RESOURCES[resource]["Properties"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        create_local_aws_resources(None)
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["KeySchema"] == props["KeySchema"]
        assert table["AttributeDefinitions"] == props["AttributeDefinitions"]
        assert dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"] == {
            "TimeToLiveStatus": "ENABLED",
            "AttributeName": ttl,
        }


def test_settings_come_from_the_environment():
    assert JobSettings.from_env({}) is None
    assert JobSettings.from_env({"JOBS_QUEUE_URL": "q"}) is None
    settings = JobSettings.from_env(
        {"JOBS_QUEUE_URL": "q", "JOBS_TABLE": "t", "JOBS_MAX_TOKENS": "1024", "JOBS_BACKOFF_BASE": "0.5"}
    )
    assert (settings.queue_url, settings.table, settings.bucket) == ("q", "t", "")
    assert (settings.max_tokens, settings.backoff_base, settings.max_receive_count) == (1024, 0.5, 5)
    with pytest.raises(ValueError, match="JOBS_MAX_TOKENS"):
        JobSettings.from_env({"JOBS_QUEUE_URL": "q", "JOBS_TABLE": "t", "JOBS_MAX_TOKENS": "lots"})


def test_visibility_backoff_is_full_jitter_with_retry_after_as_a_floor():
    settings = JobSettings("t", "q", "b", backoff_base=30.0, backoff_cap=900.0)
    runner = JobRunner(settings, gateway=None, rng=random.Random(1))  # type: ignore[arg-type]
    for receive in range(1, 8):
        ceiling = min(900.0, 30.0 * 2 ** (receive - 1))
        delays = [runner.backoff(receive) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # spread over the whole range (full jitter) ...
        assert min(delays) < 0.2 * ceiling + 1  # ... not clustered at the ceiling
    assert all(runner.backoff(1, retry_after=120) >= 120 for _ in range(50))
    assert runner.backoff(1, retry_after=10**9) == 43_200  # SQS's longest visibility timeout
