"""template.yaml, checked offline: what each function is built from and how it is exposed, the
IAM each one gets, and the files the template and the Dockerfile name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from samlocal import (
    ROOT,
    Resolver,
    asgi_target_from_run_sh,
    dockerfile_final_stage,
    function_environment,
    load_template,
    sam_translate,
)

from r1edge.routing.config import load_config

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
ATTRS = {
    "EdgeFunctionUrl.FunctionUrl": "https://edge123.lambda-url.us-east-1.on.aws/",
    "RouterStreamFunctionUrl.FunctionUrl": "https://router123.lambda-url.us-east-1.on.aws/",
    "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:123456789012:function:edge",
    "HealthTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/health",
    "ApiKeysTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/keys",
    "RateLimitsTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/limits",
    "UsageTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/usage",
    "ResponseCacheTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/cache",
    "JobQueue.Arn": "arn:aws:sqs:us-east-1:123456789012:jobs",
    "JobsTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/jobs",
    "IdempotencyTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/idempotency",
    "JobsBucket.Arn": "arn:aws:s3:::jobs",
}
JOB_SIDS = {"SubmitJobs", "JobRecords", "IdempotencyRecords", "JobObjects"}
ROUTERS = ["RouterStreamFunction", "RouterBufferedFunction"]


def functions() -> dict[str, dict]:
    return {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}


def venv_tool(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def test_cfn_lint_is_clean():
    result = subprocess.run([venv_tool("cfn-lint"), str(ROOT / "template.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "params",
    [{}, {"RoutingConfigBucket": "cfg-bucket", "ModelBucket": "model-bucket", "ClusterApiKeySecretName": ""}],
)
def test_sam_transform_succeeds_and_its_cloudformation_has_no_lint_errors(params, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    translated = sam_translate(TEMPLATE, params)
    resources = translated["Resources"]
    assert resources["RouterStreamFunctionUrl"]["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    assert resources["EdgeFunctionUrl"]["Properties"]["AuthType"] == "AWS_IAM"
    assert resources["EdgeFunction"]["Properties"]["PackageType"] == "Image"
    assert resources["EdgeFunction"]["Properties"]["TracingConfig"] == {"Mode": "Active"}
    out = tmp_path / "translated.json"
    out.write_text(json.dumps(translated))
    result = subprocess.run([venv_tool("cfn-lint"), str(out)], capture_output=True, text=True)
    assert result.returncode & 2 == 0, result.stdout  # 2 = errors; SAM's own output draws style warnings


def test_hadolint_is_clean_on_every_dockerfile():
    dockerfiles = sorted(ROOT.glob("functions/*/Dockerfile"))
    assert dockerfiles
    hadolint = venv_tool("hadolint")
    for path in dockerfiles:
        result = subprocess.run([hadolint, str(path)], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


def test_shared_layer_builds_the_r1edge_package():
    layer = RESOURCES["SharedLayer"]
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    content = ROOT / layer["Properties"]["ContentUri"]
    assert (content / "r1edge" / "__init__.py").is_file()
    assert (content / "requirements.txt").is_file()


def test_globals_set_powertools_and_tracing():
    glob = TEMPLATE["Globals"]["Function"]
    assert glob["Tracing"] == "Active"
    variables = glob["Environment"]["Variables"]
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"} <= set(variables)


@pytest.mark.parametrize("name", ROUTERS)
def test_router_runs_under_the_lambda_web_adapter(name):
    props = RESOURCES[name]["Properties"]
    code = ROOT / props["CodeUri"]
    run_sh = code / props["Handler"]
    assert props["Handler"] == "run.sh"
    assert props["Runtime"] == "python3.12"
    assert os.access(run_sh, os.X_OK)
    assert asgi_target_from_run_sh(run_sh) == ("app", "app")
    assert (code / "app.py").is_file()
    assert {"Ref": "SharedLayer"} in props["Layers"]
    assert any("LambdaAdapterLayerX86" in str(layer) for layer in props["Layers"])
    env = function_environment(TEMPLATE, name, Resolver(TEMPLATE, ATTRS))
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_READINESS_CHECK_PATH"] == "/ping"  # answers before upstreams do
    assert env["AWS_LWA_INVOKE_MODE"] == ("response_stream" if name == "RouterStreamFunction" else "buffered")


def test_streaming_router_has_a_streaming_function_url_and_buffered_one_has_http_api_routes():
    stream = RESOURCES["RouterStreamFunction"]["Properties"]
    assert stream["FunctionUrlConfig"]["InvokeMode"] == "RESPONSE_STREAM"
    buffered = RESOURCES["RouterBufferedFunction"]["Properties"]
    assert "FunctionUrlConfig" not in buffered
    routes = {
        (e["Properties"]["Method"], e["Properties"]["Path"])
        for e in buffered["Events"].values()
        if e["Type"] == "HttpApi"
    }
    assert routes == {
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, "bearer"), ({"ClusterApiKeySecretName": ""}, "none")],
)
def test_generated_routing_config_is_valid_and_signs_calls_to_the_edge(params, expected):
    resolver = Resolver(TEMPLATE, ATTRS, params)
    for name in ROUTERS:
        config = load_config(function_environment(TEMPLATE, name, resolver)["R1EDGE_CONFIG"], environ={})
        edge, cluster = config.tier_endpoints("edge")[0], config.tier_endpoints("cluster")[0]
        assert edge.url == "https://edge123.lambda-url.us-east-1.on.aws/v1"
        assert (edge.auth.type, edge.auth.service) == ("sigv4", "lambda")
        assert cluster.url == "https://api.deepseek.com/v1"
        assert cluster.upstream_model == "deepseek-reasoner"
        assert cluster.auth.type == expected
    buffered = load_config(function_environment(TEMPLATE, "RouterBufferedFunction", resolver)["R1EDGE_CONFIG"], {})
    assert buffered.deadline < 30  # API Gateway's integration timeout


def test_routing_config_from_s3_when_a_bucket_is_given():
    resolver = Resolver(TEMPLATE, ATTRS, {"RoutingConfigBucket": "my-bucket"})
    env = function_environment(TEMPLATE, "RouterStreamFunction", resolver)
    assert env["R1EDGE_CONFIG"] == "s3://my-bucket/routing.yaml"
    statements = resolver.resolve(RESOURCES["RouterStreamFunction"]["Properties"]["Policies"])[0]["Statement"]
    assert {
        "Sid": "ReadRoutingConfig",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::my-bucket/routing.yaml",
    } in statements


@pytest.mark.parametrize("name", ROUTERS)
def test_router_iam_is_least_privilege(name):
    resolver = Resolver(TEMPLATE, ATTRS)
    [policy] = resolver.resolve(RESOURCES[name]["Properties"]["Policies"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadHealthTable"]["Action"] == "dynamodb:Scan"  # the health table, read only
    assert by_sid["ReadHealthTable"]["Resource"] == ATTRS["HealthTable.Arn"]
    assert set(by_sid) == {
        "ReadHealthTable",
        "InvokeEdgeFunctionUrl",
        "ReadClusterApiKey",
        "ReadApiKeys",
        "ReadApiKeyHashSecret",
        "UpdateRateLimits",
        "RecordUsage",
        "ResponseCache",
        *JOB_SIDS,
    }
    assert by_sid["SubmitJobs"] == {
        "Sid": "SubmitJobs",
        "Effect": "Allow",
        "Action": "sqs:SendMessage",
        "Resource": ATTRS["JobQueue.Arn"],
    }
    assert by_sid["JobObjects"]["Resource"] == "arn:aws:s3:::jobs/*"
    assert sorted(by_sid["ResponseCache"]["Action"]) == ["dynamodb:GetItem", "dynamodb:PutItem"]
    assert by_sid["ResponseCache"]["Resource"] == ATTRS["ResponseCacheTable.Arn"]
    assert by_sid["ReadApiKeys"]["Action"] == "dynamodb:GetItem"  # keys are written by the CLI, not the router
    assert by_sid["ReadApiKeys"]["Resource"] == ATTRS["ApiKeysTable.Arn"]
    assert by_sid["ReadApiKeyHashSecret"]["Resource"] == "ApiKeyHashSecret"  # the secret's own ARN (its Ref)
    assert by_sid["UpdateRateLimits"]["Action"] == "dynamodb:UpdateItem"  # each charge is one conditional update
    assert by_sid["UpdateRateLimits"]["Resource"] == ATTRS["RateLimitsTable.Arn"]
    assert (by_sid["RecordUsage"]["Action"], by_sid["RecordUsage"]["Resource"]) == (
        "dynamodb:UpdateItem",
        ATTRS["UsageTable.Arn"],
    )
    assert sorted(by_sid["InvokeEdgeFunctionUrl"]["Action"]) == ["lambda:InvokeFunction", "lambda:InvokeFunctionUrl"]
    assert by_sid["InvokeEdgeFunctionUrl"]["Resource"] == ATTRS["EdgeFunction.Arn"]
    assert by_sid["ReadClusterApiKey"]["Action"] == "secretsmanager:GetSecretValue"
    assert by_sid["ReadClusterApiKey"]["Resource"].endswith(":secret:r1edge/cluster-api-key-??????")
    no_secret = Resolver(TEMPLATE, ATTRS, {"ClusterApiKeySecretName": ""})
    [policy] = no_secret.resolve(RESOURCES[name]["Properties"]["Policies"])
    assert "ReadClusterApiKey" not in [s["Sid"] for s in policy["Statement"]]
    assert "ReadHealthTable" in [s["Sid"] for s in policy["Statement"]]


def test_edge_is_an_iam_protected_streaming_container_image():
    edge = RESOURCES["EdgeFunction"]
    props = edge["Properties"]
    assert props["PackageType"] == "Image"
    assert "Runtime" not in props
    assert "Handler" not in props
    assert props["FunctionUrlConfig"] == {"AuthType": "AWS_IAM", "InvokeMode": "RESPONSE_STREAM"}
    assert props["Environment"]["Variables"]["AWS_LWA_ASYNC_INIT"] == "true"
    assert "EphemeralStorage" in props
    dockerfile = ROOT / edge["Metadata"]["Dockerfile"]
    assert edge["Metadata"]["DockerContext"] == "."
    text = dockerfile.read_text()
    assert "public.ecr.aws/lambda/python:3.12" in text
    assert "-DGGML_NATIVE=OFF" in text
    assert "/opt/extensions/lambda-adapter" in text
    final = dockerfile_final_stage(dockerfile)
    for source in final["copy"]:
        assert (ROOT / source).exists(), source
    assert final["entrypoint"] == ["python", "-m", "uvicorn"]
    assert final["cmd"][-1] == "app:app"
    assert final["env"]["AWS_LWA_READINESS_CHECK_PATH"] == "/ping"
    assert final["env"]["AWS_LWA_INVOKE_MODE"] == "response_stream"


def test_dockerignore_keeps_what_the_dockerfile_copies():
    rules = (ROOT / ".dockerignore").read_text().split()
    for source in dockerfile_final_stage(ROOT / "functions/edge/Dockerfile")["copy"]:
        assert any(rule.startswith(f"!{source}") for rule in rules), source


def test_every_function_has_a_log_group_with_retention():
    groups = {
        v["Properties"]["LogGroupName"]["Fn::Sub"]: v["Properties"]
        for v in RESOURCES.values()
        if v["Type"] == "AWS::Logs::LogGroup"
    }
    for name in functions():
        if name == "ConfigEdgeFunction":
            continue  # Lambda@Edge logs to /aws/lambda/us-east-1.<name> in each edge region
        props = groups[f"/aws/lambda/${{{name}}}"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionInDays"}


def test_outputs_give_every_url():
    outputs = TEMPLATE["Outputs"]
    resolver = Resolver(TEMPLATE, ATTRS)
    assert resolver.resolve(outputs["RouterStreamUrl"]["Value"]) == "https://router123.lambda-url.us-east-1.on.aws/v1"
    assert resolver.resolve(outputs["HttpApiUrl"]["Value"]) == "https://HttpApi.execute-api.us-east-1.amazonaws.com/v1"
    assert resolver.resolve(outputs["EdgeFunctionUrl"]["Value"]) == "https://edge123.lambda-url.us-east-1.on.aws/v1"


def test_events_for_sam_local_invoke_exist_and_are_payload_v2():
    events = sorted((ROOT / "tests" / "events").glob("*.json"))
    assert len(events) >= 5
    shapes = {
        "config-rest.json": "httpMethod",
        "config-cloudfront.json": "Records",
        "health-schedule.json": "detail-type",
        "worker-sqs.json": "Records",
    }
    for path in events:
        if path.name in shapes:
            assert shapes[path.name] in json.loads(path.read_text())
            continue
        event = json.loads(path.read_text())
        assert event["version"] == "2.0"
        assert event["requestContext"]["http"]["method"] in ("GET", "POST")


def test_config_bucket_is_private_versioned_and_encrypted():
    props = RESOURCES["ConfigBucket"]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert all(props["PublicAccessBlockConfiguration"].values())
    function = RESOURCES["ConfigFunction"]["Properties"]
    assert function["Environment"]["Variables"] == {
        "CONFIG_BUCKET": {"Ref": "ConfigBucket"},
        "CONFIG_PREFIX": "configs/",
    }
    assert function["Policies"] == [{"S3ReadPolicy": {"BucketName": {"Ref": "ConfigBucket"}}}]
    routes = {(e["Properties"]["Path"], e["Properties"]["Method"]) for e in function["Events"].values()}
    assert routes == {("/v1/configs/{proxy+}", "GET"), ("/v1/configs/{proxy+}", "HEAD")}


def test_cloudfront_caches_configs_as_the_origin_says_and_never_the_api():
    config = RESOURCES["Distribution"]["Properties"]["DistributionConfig"]
    behaviors = {b["PathPattern"]: b for b in config["CacheBehaviors"]}
    assert list(behaviors) == ["/v1/configs/*", "/v1/*"]  # first match wins: configs before the API
    assert behaviors["/v1/configs/*"]["CachePolicyId"] == {"Ref": "ConfigCachePolicy"}
    caching_disabled = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
    assert behaviors["/v1/*"]["CachePolicyId"] == caching_disabled
    assert config["DefaultCacheBehavior"]["CachePolicyId"] == caching_disabled
    policy = RESOURCES["ConfigCachePolicy"]["Properties"]["CachePolicyConfig"]
    assert (policy["MinTTL"], policy["DefaultTTL"]) == (0, 0)  # only the origin's Cache-Control makes it cache
    association = behaviors["/v1/configs/*"]["LambdaFunctionAssociations"]["Fn::If"]
    assert association[0] == "CreateConfigEdgeFunction"
    assert association[1][0]["EventType"] == "origin-request"


def test_the_lambda_at_edge_variant_exists_only_in_us_east_1_and_bundles_its_code(monkeypatch):
    edge = RESOURCES["ConfigEdgeFunction"]
    assert edge["Condition"] == "CreateConfigEdgeFunction"
    assert {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]} in TEMPLATE["Conditions"]["CreateConfigEdgeFunction"][
        "Fn::And"
    ]
    assert "Layers" not in edge["Properties"]
    assert "Environment" not in edge["Properties"]
    assert edge["Metadata"] == {"BuildMethod": "makefile"}
    assert "build-ConfigEdgeFunction:" in (ROOT / "Makefile").read_text()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    translated = sam_translate(TEMPLATE, {"ConfigEdgeFunctionEnabled": "true"})
    assert "ConfigEdgeFunctionAliaslive" in translated["Resources"]
