"""``sam local invoke`` without Docker: each function of template.yaml is loaded the way Lambda
would start it — its code and layer on the path, its resolved environment, the ASGI app named by
``run.sh`` or the Dockerfile — and driven with the events in ``tests/events/`` turned into the
requests the Lambda Web Adapter sends. The routers reach the real edge app (real SmolLM2 model)
over a socket, SigV4-signed, as they would reach the edge's Function URL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from run import free_port  # infra/local/run.py
from samlocal import (
    ROOT,
    Resolver,
    adapter_request,
    asgi_target_from_run_sh,
    dockerfile_final_stage,
    function_environment,
    load_event,
    load_module,
    load_template,
)
from starlette.testclient import TestClient

from r1edge.edge.model import resolve_model_path

pytestmark = pytest.mark.integration

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]


def deadline_ms(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


def edge_app(monkeypatch):
    """The edge image's app: the Dockerfile's final-stage ENV plus the template's environment
    (parameter defaults: no MODEL_URI, so the packaged default model, as in the image), and the
    module its CMD names."""
    stage = dockerfile_final_stage(ROOT / RESOURCES["EdgeFunction"]["Metadata"]["Dockerfile"])
    resolver = Resolver(TEMPLATE, {})
    env = {**stage["env"], **function_environment(TEMPLATE, "EdgeFunction", resolver)}
    for key, value in env.items():
        if key != "PYTHONPATH":  # /opt/deps and /var/task: this venv and the .pth file stand in
            monkeypatch.setenv(key, str(value))
    assert resolve_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    module, attr = stage["cmd"][-1].split(":")
    return getattr(load_module(ROOT / "functions/edge" / f"{module}.py", "edge_image_app"), attr)


@pytest.fixture(scope="module")
def edge_server():
    """The edge app served over a real socket, standing in for the edge's Function URL."""
    mp = pytest.MonkeyPatch()
    app = edge_app(mp)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)
    mp.undo()


#: The API key in the router events (tests/events/router-*.json): created in moto for the tests.
EVENTS_KEY = "r1e-example-events-key"


@pytest.fixture
def api_keys(monkeypatch):
    """moto with the template's key resources under their logical ids (what the resolver gives a
    resource's Ref), and the events' key, so the routers' template environment works as is."""
    from aws_lambda_powertools.utilities import parameters
    from moto import mock_aws

    from r1edge.access.keys import KEYS_TABLE_SCHEMA, DynamoKeyStore, create_key
    from r1edge.access.ratelimit import LIMITS_TABLE_SCHEMA
    from r1edge.access.usage import USAGE_TABLE_SCHEMA

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    parameters.clear_caches()
    with mock_aws():
        import boto3

        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        for table, schema in (
            ("ApiKeysTable", KEYS_TABLE_SCHEMA),
            ("RateLimitsTable", LIMITS_TABLE_SCHEMA),
            ("UsageTable", USAGE_TABLE_SCHEMA),
        ):
            dynamodb.create_table(TableName=table, **schema)
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="ApiKeyHashSecret", SecretString="events-hmac-secret"
        )
        create_key(DynamoKeyStore("ApiKeysTable"), "events-hmac-secret", "events", key=EVENTS_KEY)
        yield
    parameters.clear_caches()


def router_client(name: str, edge_url: str, monkeypatch) -> TestClient:
    props = RESOURCES[name]["Properties"]
    attrs = {"EdgeFunctionUrl.FunctionUrl": edge_url, "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:1:function:e"}
    env = function_environment(TEMPLATE, name, Resolver(TEMPLATE, attrs, {"ClusterApiKeySecretName": ""}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", name)  # set by the Lambda runtime
    # What the Lambda role's credentials look like to botocore inside the function.
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "test-token")
    code = ROOT / props["CodeUri"]
    module, attr = asgi_target_from_run_sh(code / props["Handler"])
    app = getattr(load_module(code / f"{module}.py", f"{name}_app"), attr)
    return TestClient(app, raise_server_exceptions=False)


def invoke(client: TestClient, event_name: str, function: str):
    """Invoke as Lambda would: the deadline is the function's ``Timeout`` from now."""
    timeout_s = RESOURCES[function]["Properties"]["Timeout"]
    return client.request(**adapter_request(load_event(event_name), deadline_ms(timeout_s)))


@pytest.mark.parametrize("name", ["RouterStreamFunction", "RouterBufferedFunction"])
def test_router_functions_answer_their_events(name, edge_server, monkeypatch, api_keys):
    with router_client(name, edge_server, monkeypatch) as client:
        assert client.get("/ping").status_code == 200  # the adapter's readiness check
        keyless = load_event("router-stream-models.json")
        del keyless["headers"]["authorization"]
        refused = client.request(**adapter_request(keyless, deadline_ms(30)))
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
        models = invoke(client, "router-stream-models.json", name)
        assert [m["id"] for m in models.json()["data"]] == ["auto", "edge", "deepseek-r1"]
        invalid = invoke(client, "router-stream-invalid.json", name)
        assert invalid.status_code == 400
        assert invalid.json()["error"]["param"] == "messages"
        chat = invoke(client, "router-httpapi-chat.json", name)
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-r1edge-route"] == "edge"
        assert chat.headers["x-r1edge-upstream"] == "edge-lambda"
        assert chat.json()["choices"][0]["message"]["content"]
        assert chat.headers["x-ratelimit-limit-requests"] == "60"  # the events key's default limits


def test_streaming_router_streams_through_the_signed_edge(edge_server, monkeypatch, api_keys):
    seen: list[str] = []
    with router_client("RouterStreamFunction", edge_server, monkeypatch) as client:
        upstream = client.app.state.gateway.upstream
        original = upstream.sigv4_headers

        def spy(*args, **kwargs):
            headers = original(*args, **kwargs)
            seen.append(headers["Authorization"])
            return headers

        upstream.sigv4_headers = spy
        timeout_s = RESOURCES["RouterStreamFunction"]["Properties"]["Timeout"]
        request = adapter_request(load_event("router-stream-chat.json"), deadline_ms(timeout_s))
        with client.stream(**request) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            text = "".join(response.iter_text())
    assert text.rstrip().endswith("data: [DONE]")
    assert "AWS4-HMAC-SHA256 Credential=ASIATESTKEY/" in seen[0]
    assert "/us-east-1/lambda/aws4_request" in seen[0]


def test_edge_image_answers_its_events(monkeypatch):
    with TestClient(edge_app(monkeypatch)) as client:
        assert client.get("/ping").status_code == 200
        models = invoke(client, "edge-models.json", "EdgeFunction")
        assert models.json()["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
        chat = invoke(client, "edge-chat.json", "EdgeFunction")
        assert chat.status_code == 200
        body = chat.json()
        assert body["usage"]["completion_tokens"] <= json.loads(load_event("edge-chat.json")["body"])["max_tokens"]


def test_events_parse_as_the_requests_the_adapter_sends():
    # the events of the functions behind the Lambda Web Adapter (the config and worker functions'
    # are plain handler events: see test_the_config_function_runs_as_sam_local_invoke_would_run_it
    # and tests/integration/test_jobs_worker_invoke.py)
    for path in sorted(Path(ROOT / "tests" / "events").glob("*.json")):
        if path.name.startswith(("config-", "health-", "worker-")):  # plain handler events
            continue
        deadline = deadline_ms(10)
        request = adapter_request(json.loads(path.read_text()), deadline)
        context = json.loads(request["headers"]["x-amzn-lambda-context"])
        assert context["deadline"] == deadline
        assert request["url"].startswith("/")


@pytest.mark.parametrize("event_file", ["config-httpapi.json", "config-cloudfront.json"])
def test_the_config_function_runs_as_sam_local_invoke_would_run_it(monkeypatch, tmp_path, event_file):
    import boto3
    from moto import mock_aws

    props = RESOURCES["ConfigFunction"]["Properties"]
    env = function_environment(TEMPLATE, "ConfigFunction", Resolver(TEMPLATE, {}))
    bucket = env["CONFIG_BUCKET"].lower()  # the bucket's Ref: its logical id stands in for the name
    for key, value in {**env, "CONFIG_BUCKET": bucket, "CONFIG_CACHE_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    module_name, function = props["Handler"].split(".")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=env["CONFIG_PREFIX"] + "routing.yaml", Body=b"endpoints: []\n")
        handler = getattr(load_module(ROOT / props["CodeUri"] / f"{module_name}.py", "config_sam_app"), function)
        context = type(
            "Context",
            (),
            {
                "function_name": "ConfigFunction",
                "memory_limit_in_mb": props["MemorySize"],
                "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:c",
                "aws_request_id": "sam-local",
            },
        )()
        result = handler(load_event(event_file), context)
    status = result.get("statusCode") or int(result["status"])
    assert status == 200  # the events' If-None-Match (W/"cfg-42") does not match this file
