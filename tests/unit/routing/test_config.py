"""The routing config: a config of only endpoints is complete; errors name the bad field."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from r1edge.routing.config import ConfigError, dump_config, load_config, parse_config

MINIMAL = {"endpoints": [{"name": "edge-local", "url": "http://127.0.0.1:8001/v1/", "tier": "edge"}]}


def test_endpoints_only_is_complete_with_documented_defaults():
    config = parse_config(MINIMAL, environ={})
    [ep] = config.endpoints
    assert (ep.priority, ep.weight, ep.model, ep.auth.type) == (0, 1.0, None, "none")
    assert (ep.timeouts.connect, ep.timeouts.first_byte, ep.timeouts.idle) == (5.0, 60.0, 60.0)
    assert ep.url == "http://127.0.0.1:8001/v1"
    assert ep.upstream_model == "edge"
    assert config.deadline == 300.0
    assert (config.retry.max_attempts, config.retry.backoff_base, config.retry.backoff_cap) == (4, 0.25, 8.0)
    assert config.classifier.edge_context_tokens == 2048


def test_design_example_loads(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text("""
deadline: 300
retry: {max_attempts: 4, backoff_base: 0.25, backoff_cap: 8}
endpoints:
  - name: edge-local
    url: http://127.0.0.1:8001/v1
    tier: edge
    priority: 0
  - name: r1-us-east
    url: https://r1.internal.example/v1
    tier: cluster
    priority: 0
    model: deepseek-ai/DeepSeek-R1
    timeouts: {connect: 5, first_byte: 60, idle: 60}
  - name: deepseek-public
    url: https://api.deepseek.com/v1
    tier: cluster
    priority: 1
    auth: {type: bearer, secret: r1edge/deepseek-api-key}
    model: deepseek-reasoner
""")
    config = load_config(str(path), environ={})
    assert [e.name for e in config.tier_endpoints("cluster")] == ["r1-us-east", "deepseek-public"]
    assert config.endpoints[2].auth.secret == "r1edge/deepseek-api-key"


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "gpu"}]}, "endpoints[0].tier"),
        ({"endpoints": [{"name": "a", "url": "ftp://x", "tier": "edge"}]}, "endpoints[0].url"),
        ({"endpoints": [{"name": "a", "tier": "edge"}]}, "endpoints[0].url: Field required"),
        (
            {"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge", "prioirty": 1}]},
            "endpoints[0].prioirty: unknown field",
        ),
        ({"endpoints": []}, "endpoints:"),
        ({"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge"}], "deadline": -1}, "deadline"),
        (
            {"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge"}], "retry": {"max_attempts": 0}},
            "retry.max_attempts",
        ),
        (
            {"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge", "timeouts": {"connect": 0}}]},
            "endpoints[0].timeouts.connect",
        ),
        (
            {"endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge", "auth": {"type": "bearer"}}]},
            "endpoints[0].auth",
        ),
        (
            {
                "endpoints": [
                    {"name": "a", "url": "http://x/v1", "tier": "edge"},
                    {"name": "a", "url": "http://y/v1", "tier": "cluster"},
                ]
            },
            "used twice",
        ),
        ([1, 2], "must be a mapping"),
        ({"endpoints": [{"name": "a", "url": "http://x/v1?k=1", "tier": "edge"}]}, "without ?query"),
        ({"endpoints": [{"name": "bad\nname", "url": "http://x/v1", "tier": "edge"}]}, "endpoints[0].name"),
        ({"endpoints": [{"name": "クラスタ", "url": "http://x/v1", "tier": "edge"}]}, "endpoints[0].name"),
        (
            {
                "endpoints": [{"name": "a", "url": "http://x/v1", "tier": "edge"}],
                "classifier": {"patterns": {"m": ["(x"]}},
            },
            "classifier.patterns",
        ),
    ],
)
def test_validation_names_the_bad_field(doc, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={})
    assert fragment in str(info.value)


def test_environment_overrides_single_values():
    config = parse_config(MINIMAL, environ={"R1EDGE_DEADLINE": "12.5"})
    assert config.deadline == 12.5
    with pytest.raises(ConfigError, match="deadline"):
        parse_config(MINIMAL, environ={"R1EDGE_DEADLINE": "soon"})


def test_unreadable_and_unparseable_sources(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), environ={})


def test_dump_round_trips():
    config = parse_config(MINIMAL, environ={})
    assert parse_config(json.loads(dump_config(config)), environ={}) == config


@mock_aws
def test_loads_from_s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="cfg")
    s3.put_object(Bucket="cfg", Key="routing/prod.json", Body=json.dumps(MINIMAL).encode())
    assert load_config("s3://cfg/routing/prod.json", environ={}).endpoints[0].name == "edge-local"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("s3://cfg/routing/absent.json", environ={})
    with pytest.raises(ConfigError, match="s3://bucket/key"):
        load_config("s3://cfg", environ={})
