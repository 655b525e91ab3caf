"""The worker function as ``sam local invoke -e tests/events/worker-sqs.json`` would run it: its
code, layer and environment from template.yaml, against moto and the fault-injecting upstream on
a real socket."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from faultserver import Fault, FaultServer
from moto import mock_aws
from run import create_local_aws_resources
from samlocal import ROOT, Resolver, function_environment, load_event, load_module, load_template

from r1edge.apps import worker as worker_runtime
from r1edge.jobs.settings import JobSettings
from r1edge.jobs.store import JobStore

pytestmark = pytest.mark.integration

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
ATTRS = {
    "EdgeFunctionUrl.FunctionUrl": "https://edge123.lambda-url.us-east-1.on.aws/",
    "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:123456789012:function:edge",
    "JobQueue.Arn": "arn:aws:sqs:us-east-1:123456789012:r1edge-jobs",
    "JobsTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/r1edge-jobs",
    "JobsBucket.Arn": "arn:aws:s3:::r1edge-jobs",
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
