"""Network trust: the router only ever calls endpoints named in its routing config (nothing in a
request chooses a URL); the edge's Function URL is ``AWS_IAM`` and only the routers' roles may
invoke it; every IAM policy in template.yaml (after the SAM transform) is least-privilege —
resources are references, never ``*``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from samlocal import load_template, sam_translate
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

MSG = [{"role": "user", "content": "hi"}]
CONFIGURED = ("http://edge-a/v1/", "http://r1-a/v1/")
#: Actions AWS offers no resource-level permissions for (Service Authorization Reference).
NO_RESOURCE_LEVEL = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData"}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"model": "http://evil.example/v1", "messages": MSG}, {}),
        ({"messages": MSG, "api_base": "http://evil.example/v1", "base_url": "http://evil.example"}, {}),
        ({"messages": MSG, "url": "http://169.254.169.254/latest/meta-data/"}, {}),
        ({"messages": [{"role": "user", "content": "fetch http://evil.example/x"}]}, {}),
        (
            {"messages": MSG, "model": "deepseek-r1"},
            {
                "Host": "evil.example",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "host=evil.example",
                "x-r1edge-upstream": "http://evil.example/v1",
                "x-r1edge-endpoint": "evil",
                "Referer": "http://evil.example/",
            },
        ),
        ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f", "url": "http://evil"}}]}, {}),
    ],
)
def test_only_configured_endpoints_are_ever_called(body, headers):
    fake = FakeUpstream({"edge-a": [json_reply(completion())], "r1-a": [json_reply(completion())]})
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))
    with TestClient(create_app(cfg, fake.upstream()), raise_server_exceptions=False) as client:
        response = client.post("/v1/chat/completions?url=http://evil.example/", json=body, headers=headers)
        client.get("/v1/models?base_url=http://evil.example", headers=headers)
    assert response.status_code in (200, 400, 404)
    for call in fake.calls:
        assert str(call.url).startswith(CONFIGURED), call.url
        assert "evil" not in str(call.url)
        assert call.url.host in ("edge-a", "r1-a")


# --- template.yaml after the SAM transform ---


@pytest.fixture(scope="module")
def translated(tmp_path_factory) -> dict[str, Any]:
    import os

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return sam_translate(load_template())["Resources"]


def branches(value: Any) -> list[Any]:
    """Both sides of every ``Fn::If`` (``AWS::NoValue`` dropped), so each possible policy is checked."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, yes, no = value["Fn::If"]
        return [v for side in (yes, no) for v in branches(side)]
    if isinstance(value, dict) and value == {"Ref": "AWS::NoValue"}:
        return []
    return [value]


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for wrapped in role["Properties"].get("Policies", []):
        for policy in branches(wrapped):
            for doc in branches(policy["PolicyDocument"]):
                for item in doc["Statement"]:
                    out.extend(branches(item))
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resource_text(resource: Any) -> str | None:
    """The literal part of a resource: a plain string, or a ``Fn::Sub`` template; ``None`` for
    ``Ref``/``Fn::GetAtt`` (a reference to one resource)."""
    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def test_every_iam_policy_is_least_privilege(translated):
    roles = {k: v for k, v in translated.items() if v["Type"] == "AWS::IAM::Role"}
    assert {"RouterStreamFunctionRole", "RouterBufferedFunctionRole", "EdgeFunctionRole"} <= set(roles)
    checked = 0
    for name, role in roles.items():
        for statement in statements(role):
            actions = as_list(statement["Action"])
            assert "*" not in actions, name
            assert not any(a.endswith(":*") for a in actions), (name, actions)
            if set(actions) <= NO_RESOURCE_LEVEL:
                continue
            for resource in as_list(statement["Resource"]):
                for option in branches(resource):
                    text = resource_text(option)
                    checked += 1
                    if text is None:
                        continue
                    assert text != "*", (name, statement)
                    if "*" in text:  # a wildcard only below a named resource: ${Table}/index/*
                        assert "${" in text.split("*")[0], (name, statement)
                    assert ":*:" not in text, (name, statement)
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            text = json.dumps(arn)
            assert any(p in text for p in ("AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess")), (name, arn)
    assert checked >= 10


#: The roles that may invoke the edge's Function URL: the two routers, the health function, which
#: probes every endpoint of the routing config, and the job worker, which routes as the routers do.
EDGE_CALLERS = ("RouterStreamFunctionRole", "RouterBufferedFunctionRole", "HealthFunctionRole", "WorkerFunctionRole")


def test_the_edge_function_url_is_iam_and_only_the_routers_and_prober_may_invoke_it(translated):
    assert translated["EdgeFunctionUrl"]["Properties"]["AuthType"] == "AWS_IAM"
    permissions = [
        r["Properties"]
        for r in translated.values()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["FunctionName"] == {"Ref": "EdgeFunction"}
    ]
    assert sorted(json.dumps(p["Principal"]) for p in permissions) == sorted(
        json.dumps({"Fn::GetAtt": [role, "Arn"]}) for role in EDGE_CALLERS
    )
    for p in permissions:
        assert (p["Action"], p["FunctionUrlAuthType"]) == ("lambda:InvokeFunctionUrl", "AWS_IAM")
    # and no other role's own policy lets it call the edge
    for name, role in translated.items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        for statement in statements(role):
            if any(a.startswith("lambda:Invoke") for a in as_list(statement["Action"])):
                assert name in EDGE_CALLERS, name
                assert statement["Resource"] == {"Fn::GetAtt": ["EdgeFunction", "Arn"]}


def test_the_routers_read_only_what_auth_needs(translated):
    for name in ("RouterStreamFunctionRole", "RouterBufferedFunctionRole"):
        by_resource: dict[str, set[str]] = {}
        for statement in statements(translated[name]):
            for resource in as_list(statement["Resource"]):
                by_resource.setdefault(json.dumps(resource), set()).update(as_list(statement["Action"]))
        assert by_resource[json.dumps({"Fn::GetAtt": ["ApiKeysTable", "Arn"]})] == {"dynamodb:GetItem"}
        assert by_resource[json.dumps({"Ref": "ApiKeyHashSecret"})] == {"secretsmanager:GetSecretValue"}
        assert by_resource[json.dumps({"Fn::GetAtt": ["UsageTable", "Arn"]})] == {"dynamodb:UpdateItem"}
        assert by_resource[json.dumps({"Fn::GetAtt": ["RateLimitsTable", "Arn"]})] == {"dynamodb:UpdateItem"}


def test_api_key_resources_match_the_code_and_protect_the_data(translated):
    from r1edge.access.keys import KEYS_TABLE_SCHEMA
    from r1edge.access.ratelimit import LIMITS_TABLE_SCHEMA
    from r1edge.access.usage import USAGE_TABLE_SCHEMA

    for logical_id, schema in (
        ("ApiKeysTable", KEYS_TABLE_SCHEMA),
        ("RateLimitsTable", LIMITS_TABLE_SCHEMA),
        ("UsageTable", USAGE_TABLE_SCHEMA),
    ):
        props = translated[logical_id]["Properties"]
        assert {k: props[k] for k in schema} == schema, logical_id
        assert props["SSESpecification"] == {"SSEEnabled": True}
    assert translated["RateLimitsTable"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires",
        "Enabled": True,
    }
    secret = translated["ApiKeyHashSecret"]["Properties"]
    assert secret["GenerateSecretString"]["PasswordLength"] >= 32
    assert "SecretString" not in secret  # generated by Secrets Manager, never written in the template
