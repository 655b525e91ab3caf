"""Error messages quote at most 200 characters of what the client sent (a model name, a param
value, a path, a method, a config name, a job id), through one helper,
:func:`r1edge.protocol.errors.quote`, which says how long the value was."""

from __future__ import annotations

import json

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from jobstack import chat, tenant_app
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.configfiles import api as configapi
from r1edge.protocol.errors import InvalidRequest, MethodNotAllowed, NotFound, quote

LONG = "m" * 10_000
MSG = [{"role": "user", "content": "hi"}]
#: 200 characters of the value, the quotes, the ellipsis and the length note, and the sentence.
MAX_MESSAGE = 400


def test_quote_keeps_short_values_whole_and_cuts_long_ones_saying_how_long_they_were():
    assert quote("gpt-4") == "'gpt-4'"
    assert quote(True) == "true"
    assert quote({"a": [1, 2]}) == '{"a":[1,2]}'
    assert quote("x" * 200) == repr("x" * 200)
    assert quote(LONG) == repr("m" * 200 + "…") + " (10000 characters)"
    numbers = list(range(5000))
    size = len(json.dumps(numbers, separators=(",", ":")))
    cut = quote(numbers)
    assert cut == json.dumps(numbers, separators=(",", ":"))[:200] + f"… ({size} characters of JSON)"
    assert quote("abcdef", limit=3) == "'abc…' (6 characters)"


@pytest.fixture
def client():
    fake = FakeUpstream({"edge-a": [json_reply(completion())], "r1-a": [json_reply(completion())]})
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))
    with TestClient(create_app(cfg, fake.upstream()), raise_server_exceptions=False) as c:
        yield c


def _message(response) -> str:
    return response.json()["error"]["message"]


def test_a_10000_character_model_name_is_quoted_short(client):
    response = client.post("/v1/chat/completions", json={"model": LONG, "messages": MSG})
    assert response.status_code == 404
    message = _message(response)
    assert len(message) < MAX_MESSAGE
    assert "m" * 200 + "…" in message
    assert "m" * 201 not in message
    assert "(10000 characters)" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "9" * 10_000),
        ("max_tokens", -(10**4000)),
        ("temperature", "hot" * 3_000),
        ("top_p", ["x" * 100] * 100),
        ("n", {"k" * 5_000: 1}),
    ],
    ids=["max_tokens-str", "max_tokens-huge-negative-int", "temperature-str", "top_p-list", "n-object"],
)
def test_a_long_param_value_is_quoted_short(client, field, value):
    # json.dumps refuses ints past Python's 4300-digit limit: write that body by hand.
    raw = json.dumps({"messages": MSG, field: "PLACEHOLDER"})
    text = str(value) if isinstance(value, int) else json.dumps(value)
    response = client.post(
        "/v1/chat/completions",
        content=raw.replace('"PLACEHOLDER"', text),
        headers={"content-type": "application/json"},
    )
    if isinstance(value, int):  # Python's json refuses ints of over 4300 digits itself
        assert response.status_code == 400
    else:
        assert response.status_code == 400
        assert response.json()["error"]["param"] == field
    assert len(_message(response)) < MAX_MESSAGE


def test_a_long_role_is_quoted_short(client):
    response = client.post("/v1/chat/completions", json={"messages": [{"role": LONG, "content": "hi"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].role"
    assert len(_message(response)) < MAX_MESSAGE
    assert "(10000 characters)" in _message(response)


def test_a_long_unknown_path_and_method_are_quoted_short(client):
    response = client.get("/v1/" + "p" * 10_000)
    assert response.status_code == 404
    assert len(_message(response)) < MAX_MESSAGE
    assert "(10004 characters)" in _message(response)
    response = client.request("DELETE", "/v1/chat/completions")
    assert response.status_code == 405
    assert _message(response) == "Method 'DELETE' is not allowed for '/v1/chat/completions'."


def test_a_long_model_name_in_a_job_submission_is_quoted_short(stack):
    app = create_app(stack.gateway.config, stack.upstream.upstream(), jobs=stack.service, **stack.fake_clock.options())
    with TestClient(tenant_app(app), raise_server_exceptions=False) as client:
        response = client.post("/v1/jobs", json=chat(model=LONG))
        assert response.status_code == 404
        assert len(_message(response)) < MAX_MESSAGE
        assert "(10000 characters)" in _message(response)
        response = client.get("/v1/jobs/job_" + "j" * 10_000)
        assert response.status_code == 404
        assert len(_message(response)) < MAX_MESSAGE
        assert "(10004 characters)" in _message(response)


class _NoConfigs:
    def get(self, key: str, stale_if_error: float = 0.0):
        raise NotFound(f"No config named {quote(key)}.")


def test_the_config_function_quotes_names_and_methods_short():
    settings = configapi.ConfigSettings(bucket="cfg", cache_dir=None)
    with pytest.raises(InvalidRequest) as bad_name:
        configapi.serve(_NoConfigs(), settings, "GET", "%" + "n" * 10_000, {})
    assert len(bad_name.value.message) < MAX_MESSAGE
    assert "(10001 characters)" in bad_name.value.message
    with pytest.raises(MethodNotAllowed) as bad_method:
        configapi.serve(_NoConfigs(), settings, "X" * 10_000, "routing.yaml", {})
    assert len(bad_method.value.message) < MAX_MESSAGE
    assert "(10000 characters)" in bad_method.value.message
    name = "a/" * 127 + "zz"  # 256 characters: the longest name the function accepts
    with pytest.raises(NotFound) as missing:
        configapi.serve(_NoConfigs(), settings, "GET", name, {})
    assert missing.value.message == f"No config named {quote(name)}."
    assert "(256 characters)" in missing.value.message


def test_a_5000_digit_content_length_is_a_413_never_a_500_and_is_quoted_short(client):
    declared = "9" * 5_000  # past Python's 4300-digit limit on int(): a 500 before
    response = client.post(
        "/v1/chat/completions",
        content=json.dumps({"messages": MSG}),
        headers={"content-type": "application/json", "content-length": declared},
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        f"Content-Length {quote(declared, 24)} is over the limit of 1048576 bytes."
    )
