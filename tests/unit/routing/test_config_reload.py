"""The router re-reads its routing config from S3 (Powertools Parameters, an S3 provider) within
the max age, without a restart; an invalid new version is rejected by name and the last good one
stays in use."""

from __future__ import annotations

import json

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import BaseProvider
from fakes import FakeClock, FakeUpstream, completion, json_reply
from moto import mock_aws
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.protocol.errors import ConfigError
from r1edge.routing.reload import ConfigReloader

EDGE_ONLY = {"endpoints": [{"name": "edge-a", "url": "http://edge-a/v1", "tier": "edge"}]}
WITH_CLUSTER = {"endpoints": [*EDGE_ONLY["endpoints"], {"name": "r1-a", "url": "http://r1-a/v1", "tier": "cluster"}]}
BAD_TIER = {"endpoints": [{"name": "edge-a", "url": "http://edge-a/v1", "tier": "gpu"}]}


class DictProvider(BaseProvider):
    """A Parameters provider over a dict, counting reads."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self.values = values
        self.reads = 0
        self.down = False

    def _get(self, name, **sdk_options):
        self.reads += 1
        if self.down:
            raise ConnectionError("S3 unreachable")
        return self.values[name]

    def _get_multiple(self, path, **sdk_options):
        return {k[len(path) :].lstrip("/"): v for k, v in self.values.items() if k.startswith(path)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_s3_changes_are_picked_up_within_the_max_age_and_bad_versions_are_rejected(monkeypatch):
    import r1edge.routing.reload

    errors: list[tuple[str, dict]] = []
    monkeypatch.setattr(r1edge.routing.reload.logger, "error", lambda msg, extra: errors.append((msg, extra)))
    provider, clock = DictProvider({"cfg/routing.yaml": json.dumps(EDGE_ONLY)}), Clock()
    reloader = ConfigReloader("s3://cfg/routing.yaml", max_age=30, provider=provider, clock=clock)
    first = reloader.config
    provider.values["cfg/routing.yaml"] = json.dumps(WITH_CLUSTER)
    clock.now += 29
    assert reloader.refresh() is first  # within the max age: S3 is not asked
    assert provider.reads == 1
    clock.now += 1
    second = reloader.refresh()
    assert [e.name for e in second.endpoints] == ["edge-a", "r1-a"]
    provider.values["cfg/routing.yaml"] = json.dumps(BAD_TIER)
    clock.now += 30
    assert reloader.refresh() is second  # rejected: the last good one stays
    assert errors[0][0].startswith("new routing config rejected")
    assert "endpoints[0].tier" in errors[0][1]["error"]  # the log line names the field
    provider.down = True
    clock.now += 30
    assert reloader.refresh() is second  # S3 down: keep going
    assert provider.reads == 4


def test_no_good_first_version_is_a_config_error():
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.tier"):
        ConfigReloader("s3://cfg/r.yaml", provider=DictProvider({"cfg/r.yaml": json.dumps(BAD_TIER)}))
    with pytest.raises(ConfigError, match="s3://bucket/key"):
        ConfigReloader("s3://only-bucket", provider=DictProvider({}))
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigReloader("s3://cfg/absent.yaml", provider=DictProvider({}))


def test_the_router_reloads_from_s3_without_a_restart(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("R1EDGE_CONFIG", "s3://cfg/routing.yaml")
    monkeypatch.setenv("R1EDGE_CONFIG_MAX_AGE", "0")
    fake = FakeUpstream({"edge-a": [json_reply(completion("edge"))], "r1-a": [json_reply(completion("r1"))]})
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="cfg")
        s3.put_object(Bucket="cfg", Key="routing.yaml", Body=json.dumps(EDGE_ONLY).encode())
        with TestClient(create_app(upstream=fake.upstream(), **FakeClock().options())) as client:
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["auto", "edge"]
            s3.put_object(Bucket="cfg", Key="routing.yaml", Body=json.dumps(WITH_CLUSTER).encode())
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["auto", "edge", "deepseek-r1"]
            body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}
            assert client.post("/v1/chat/completions", json=body).headers["x-r1edge-upstream"] == "r1-a"
            s3.put_object(Bucket="cfg", Key="routing.yaml", Body=b"endpoints: [")
            assert client.post("/v1/chat/completions", json=body).status_code == 200  # last good config


def test_unchanged_endpoints_keep_their_breaker_state_across_a_reload():
    from r1edge.observe.metrics import Recorder
    from r1edge.routing.config import parse_config
    from r1edge.routing.gateway import Gateway

    config = parse_config(WITH_CLUSTER, environ={})
    gateway = Gateway(config, upstream=None, recorder=Recorder("router"))  # type: ignore[arg-type]
    edge_state = gateway.pool["edge-a"]
    edge_state.breaker.record_failure(0.0)
    changed = json.loads(json.dumps(WITH_CLUSTER))
    changed["endpoints"][1]["url"] = "http://r1-b/v1"
    gateway.reconfigure(parse_config(changed, environ={}))
    assert gateway.pool["edge-a"] is edge_state  # same endpoint: same breaker, EWMA, in-flight count
    assert gateway.pool["r1-a"].endpoint.url == "http://r1-b/v1"


def test_the_s3_provider_reads_one_object_or_every_object_under_a_prefix(models_s3):
    from r1edge.routing.reload import S3Provider

    models_s3.put_object(Bucket="models", Key="configs/a.yaml", Body=b"a: 1\n")
    models_s3.put_object(Bucket="models", Key="configs/b.json", Body=b'{"b": 2}')
    models_s3.put_object(Bucket="models", Key="other/c.txt", Body=b"c")
    provider = S3Provider(models_s3)
    assert provider.get("models/configs/a.yaml") == "a: 1\n"
    assert provider.get_multiple("models/configs") == {"a.yaml": "a: 1\n", "b.json": '{"b": 2}'}
