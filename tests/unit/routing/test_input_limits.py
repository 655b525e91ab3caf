"""Input limits: the body-size cap (1 MiB by default, also for chunked uploads) before parsing,
per-tier caps on message count, text length and ``max_tokens``, unknown fields tolerated but
forwarded only when allow-listed, and plain Lambda handlers decoding base64 bodies first."""

from __future__ import annotations

import base64
import json

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.configfiles.apigw import event_body, http_api_event
from r1edge.protocol.errors import InvalidRequest, RequestTooLarge
from r1edge.protocol.validation import FORWARDED_FIELDS, upstream_body
from r1edge.routing.config import RoutingConfig

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"edge-a": [json_reply(completion())], "r1-a": [json_reply(completion())]})


def client_for(fake: FakeUpstream, **extra) -> TestClient:
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), **extra)
    return TestClient(create_app(cfg, fake.upstream()), raise_server_exceptions=False)


def test_default_body_cap_is_one_mebibyte():
    assert RoutingConfig(endpoints=[{"name": "e", "url": "http://e/v1", "tier": "edge"}]).max_body_bytes == 1024 * 1024


def test_body_over_one_mebibyte_is_413_before_parsing(fake):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (1024 * 1024) + b'"}]}'
    with client_for(fake) as client:
        response = client.post("/v1/chat/completions", content=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        # not JSON at all, but too large: the size is checked first
        response = client.post("/v1/chat/completions", content=b"{" * (1024 * 1024 + 1))
        assert response.status_code == 413
    assert fake.calls == []


def test_chunked_upload_over_the_cap_is_413(fake):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}]}'

    with client_for(fake, max_body_bytes=10_000) as client:
        response = client.post("/v1/chat/completions", content=chunks())
        assert response.status_code == 413
        assert "content-length" not in {k.lower() for k in response.request.headers}  # really chunked
        small = client.post("/v1/chat/completions", content=iter([json.dumps({"messages": MSG}).encode()]))
        assert small.status_code == 200
    assert len(fake.calls) == 1


def test_malformed_json_is_400(fake):
    with client_for(fake) as client:
        response = client.post("/v1/chat/completions", content=b'{"messages": [')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("model", "body", "param", "code"),
    [
        ("edge", {"messages": MSG * 4}, "messages", "array_above_max_length"),
        ("deepseek-r1", {"messages": MSG * 11}, "messages", "array_above_max_length"),
        ("edge", {"messages": [{"role": "user", "content": "a" * 60}, *MSG]}, "messages[0].content", None),
        ("edge", {"messages": [*MSG, {"role": "user", "content": "a" * 50}]}, "messages[1].content", None),
        ("edge", {"messages": MSG, "max_tokens": 65}, "max_tokens", "invalid_value"),
        ("edge", {"messages": MSG, "max_completion_tokens": 65}, "max_completion_tokens", "invalid_value"),
        ("deepseek-r1", {"messages": MSG, "max_tokens": 129}, "max_tokens", "invalid_value"),
    ],
)
def test_tier_caps_are_400_naming_the_field(fake, model, body, param, code):
    limits = {
        "edge": {"max_messages": 3, "max_content_chars": 50, "max_tokens": 64},
        "cluster": {"max_messages": 10, "max_content_chars": 100, "max_tokens": 128},
    }
    with client_for(fake, limits=limits) as client:
        response = client.post("/v1/chat/completions", json={"model": model, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == (code or "string_above_max_length")
    assert fake.calls == []


def test_tier_caps_follow_the_tier_chosen(fake):
    limits = {"edge": {"max_tokens": 64}, "cluster": {"max_tokens": 4096}}
    with client_for(fake, limits=limits) as client:
        assert client.post("/v1/chat/completions", json={"model": "edge", "messages": MSG, "max_tokens": 64}).is_success
        cluster = client.post(
            "/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG, "max_tokens": 2000}
        )
        assert cluster.status_code == 200
        # auto with a large max_tokens is classified heavy (cluster), so the cluster's cap applies
        auto = client.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2000})
        assert auto.status_code == 200
        assert auto.headers["x-r1edge-route"] == "cluster"


def test_null_max_tokens_is_absent_even_under_a_cap(fake):
    with client_for(fake, limits={"edge": {"max_tokens": 1}}) as client:
        response = client.post("/v1/chat/completions", json={"model": "edge", "messages": MSG, "max_tokens": None})
    assert response.status_code == 200
    assert "max_tokens" not in fake.bodies()[0] or fake.bodies()[0]["max_tokens"] is None


def test_unknown_fields_are_tolerated_and_not_forwarded(fake):
    body = {
        "model": "edge",
        "messages": MSG,
        "temperature": 0.5,
        "some_new_openai_field": {"x": 1},
        "api_base": "http://169.254.169.254/",
        "metadata": {"who": "me"},
        "top_k": 20,
    }
    with client_for(fake) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    sent = fake.bodies()[0]
    assert sent == {"model": "edge", "messages": MSG, "temperature": 0.5, "top_k": 20}


def test_config_forward_fields_extend_the_allow_list(fake):
    with client_for(fake, forward_fields=["chat_template_kwargs"]) as client:
        body = {"model": "edge", "messages": MSG, "chat_template_kwargs": {"thinking": True}, "other": 1}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert fake.bodies()[0]["chat_template_kwargs"] == {"thinking": True}
    assert "other" not in fake.bodies()[0]


def test_the_allow_list_covers_openais_chat_parameters():
    for name in ("messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "tools"):
        assert name in FORWARDED_FIELDS
    assert upstream_body({"messages": [], "x": 1, "user": "u"}) == {"messages": [], "user": "u"}


# Plain Lambda handlers (the config function): API Gateway bodies flagged base64 are decoded first.


def test_event_body_decodes_base64_then_utf8():
    event = {"body": base64.b64encode("héllo".encode()).decode(), "isBase64Encoded": True}
    assert event_body(event) == "héllo"
    assert event_body({"body": "plain", "isBase64Encoded": False}) == "plain"
    assert event_body({"body": None}) == ""


@pytest.mark.parametrize(
    "event",
    [
        {"body": "not base64!!", "isBase64Encoded": True},
        {"body": "aGVsbG8", "isBase64Encoded": True},  # bad padding
        {"body": base64.b64encode(b"\xff\xfe\x00").decode(), "isBase64Encoded": True},  # not UTF-8
        {"body": 42},
    ],
)
def test_event_body_refuses_bad_base64_and_non_utf8_with_400(event):
    with pytest.raises(InvalidRequest) as err:
        event_body(event)
    assert err.value.status == 400


def test_event_body_over_the_cap_is_413_measured_decoded():
    raw = b"a" * 1000
    encoded = {"body": base64.b64encode(raw).decode(), "isBase64Encoded": True}
    assert len(event_body(encoded, max_bytes=1000)) == 1000  # 1336 base64 characters, 1000 bytes: fits
    with pytest.raises(RequestTooLarge):
        event_body(encoded, max_bytes=999)
    with pytest.raises(RequestTooLarge):
        event_body({"body": "b" * 2000}, max_bytes=1000)


def test_config_function_answers_bad_bodies_with_400_and_413():
    import importlib.util

    from samlocal import ROOT

    spec = importlib.util.spec_from_file_location("config_fn_limits", ROOT / "functions/config/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "config", 256, "r1"
        invoked_function_arn = "arn:aws:lambda:us-east-1:1:function:config"

    event = http_api_event("POST", "/v1/configs/routing.json", "", [], b"\xff\xfe binary")
    assert event["isBase64Encoded"] is True
    result = module.lambda_handler(event, Context())
    assert result["statusCode"] == 400
    assert json.loads(result["body"])["error"]["type"] == "invalid_request_error"
    event = http_api_event("POST", "/v1/configs/routing.json", "", [], b"z" * (1024 * 1024 + 1))
    assert module.lambda_handler(event, Context())["statusCode"] == 413
    broken = http_api_event("POST", "/v1/configs/routing.json", "", [], b"{}")
    broken.update(body="%%%", isBase64Encoded=True)
    assert module.lambda_handler(broken, Context())["statusCode"] == 400
