"""``n`` is capped per tier (routing config ``limits.<tier>.max_n``): over the cap, a 400
``invalid_request_error`` with ``param: "n"`` and code ``invalid_value`` (as ``max_tokens`` over
its cap), before any upstream call; at the cap, the request goes upstream with ``n`` as sent."""

from __future__ import annotations

import json

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.routing.config import InputLimits, TierLimits

MSG = [{"role": "user", "content": "hi"}]


def choices(n: int) -> dict:
    answer = completion("ok")
    answer["choices"] = [{**answer["choices"][0], "index": i} for i in range(n)]
    return answer


def client_for(fake: FakeUpstream, **extra) -> TestClient:
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), **extra)
    return TestClient(create_app(cfg, fake.upstream()), raise_server_exceptions=False)


def test_defaults_are_one_choice_on_the_edge_and_eight_on_the_cluster():
    limits = InputLimits()
    assert (limits.edge.max_n, limits.cluster.max_n) == (1, 8)
    assert TierLimits().max_n == 8


@pytest.mark.parametrize(("model", "n", "tier", "cap"), [("deepseek-r1", 9, "cluster", 8), ("edge", 2, "edge", 1)])
def test_n_over_the_tiers_cap_is_a_400_naming_n_and_reaches_no_upstream(model, n, tier, cap):
    fake = FakeUpstream({"edge-a": [json_reply(choices(n))], "r1-a": [json_reply(choices(n))]})
    with client_for(fake) as client:
        response = client.post("/v1/chat/completions", json={"model": model, "messages": MSG, "n": n})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "n", "invalid_value")
    assert f"'n' is too large: {n}" in error["message"]
    assert f"The {tier} tier generates at most {cap} choice" in error["message"]
    assert fake.calls == []


def test_n_at_the_cap_goes_upstream_as_sent():
    fake = FakeUpstream({"r1-a": [json_reply(choices(8))]})
    with client_for(fake) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG, "n": 8})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 8
    assert [json.loads(c.content)["n"] for c in fake.calls] == [8]


def test_the_cap_comes_from_the_routing_config():
    fake = FakeUpstream({"r1-a": [json_reply(choices(3))]})
    with client_for(fake, limits={"cluster": {"max_n": 2}}) as client:
        over = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG, "n": 3})
        at = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG, "n": 2})
    assert over.status_code == 400
    assert over.json()["error"]["param"] == "n"
    assert at.status_code == 200
    assert len(fake.calls) == 1


def test_a_config_with_max_n_below_one_is_refused():
    from r1edge.protocol.errors import ConfigError

    with pytest.raises(ConfigError, match=r"limits\.cluster\.max_n: Input should be greater than or equal to 1"):
        config(endpoint("r1-a", "cluster"), limits={"cluster": {"max_n": 0}})
