"""The worker function as ``sam local invoke -e tests/events/worker-sqs.json`` would run it (its
code, layer and environment from template.yaml, against moto and a fault-injecting upstream); the
template's queue, tables and event source mapping against what ``make run`` creates; the job
settings and the visibility backoff."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import boto3
import pytest
from faultserver import Fault, FaultServer
from moto import mock_aws
from run import (
    IDEMPOTENCY_TABLE,
    JOBS_MAX_RECEIVE_COUNT,
    JOBS_QUEUE_ATTRIBUTES,
    JOBS_TABLE,
    create_local_aws_resources,
)
from samlocal import ROOT, Resolver, function_environment, load_event, load_module, load_template
from worker import BATCH_SIZE

from r1edge.apps import worker as worker_runtime
from r1edge.jobs.runner import JobRunner
from r1edge.jobs.settings import MAX_MESSAGE_BYTES, JobSettings
from r1edge.jobs.store import JobStore

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
ATTRS = {
    "EdgeFunctionUrl.FunctionUrl": "https://edge123.lambda-url.us-east-1.on.aws/",
    "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:123456789012:function:edge",
    "JobQueue.Arn": "arn:aws:sqs:us-east-1:123456789012:r1edge-jobs",
    "JobsTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/r1edge-jobs",
    "JobsBucket.Arn": "arn:aws:s3:::r1edge-jobs",
}


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


def test_worker_function_runs_its_event_as_sam_local_invoke_would(monkeypatch):
    props = RESOURCES["WorkerFunction"]["Properties"]
    assert props["Handler"] == "app.lambda_handler"
    assert {"Ref": "SharedLayer"} in props["Layers"]
    env = function_environment(TEMPLATE, "WorkerFunction", Resolver(TEMPLATE, ATTRS, {"ClusterApiKeySecretName": ""}))
    event = load_event("worker-sqs.json")
    job_id = json.loads(event["Records"][0]["body"])["job_id"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws(), FaultServer("r1", [Fault(chunks=2)]) as upstream:
        local = create_local_aws_resources(None)
        # the template's Refs stand for these physical names; the cluster is the fault server
        overrides = {**local, "R1EDGE_CONFIG": json.dumps({"endpoints": [upstream.endpoint()]})}
        for key, value in {**env, **overrides}.items():
            monkeypatch.setenv(key, value)
        assert env["JOBS_TTL_DAYS"] == "7"
        settings = JobSettings.from_env({**env, **overrides})
        JobStore(settings).create(job_id, "anonymous", "deepseek-r1", "req")
        worker_runtime.runner_from_env.cache_clear()
        module = load_module(ROOT / props["CodeUri"] / "app.py", "worker_sam_app")
        context = SimpleNamespace(
            function_name="WorkerFunction",
            memory_limit_in_mb=props["MemorySize"],
            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:w",
            aws_request_id="sam-local",
            get_remaining_time_in_millis=lambda: props["Timeout"] * 1000,
        )
        result = module.lambda_handler(event, context)
        worker_runtime.runner_from_env.cache_clear()
        job = JobStore(settings).get(job_id, "anonymous")
    # the poison record is reported as a partial batch failure; the job's record is not
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    assert job["status"] == "succeeded"
    assert json.loads(job["response"])["choices"][0]["message"]["content"] == "c0 c1 "
    [call] = upstream.calls
    assert call.body["max_tokens"] == 64
    assert call.headers["x-request-id"]  # the job id, as a UUID the upstream accepts


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
