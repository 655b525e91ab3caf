"""The routing config's ``cache`` section: defaults, validation naming the field, and the
environment overrides of single values."""

from __future__ import annotations

import re

import pytest

from r1edge.protocol.errors import ConfigError
from r1edge.routing.config import parse_config

MINIMAL = {"endpoints": [{"name": "e", "url": "http://127.0.0.1:1/v1", "tier": "edge"}]}


def test_defaults_cache_deterministic_answers_for_an_hour_in_l1_only():
    cache = parse_config(MINIMAL, environ={}).cache
    assert cache.enabled is True
    assert cache.ttl == 3600
    assert cache.l1_size_limit == 256 * 1024 * 1024
    assert (cache.l2, cache.table) == (False, "r1edge-cache")
    assert cache.nondeterministic_models == []


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"ttl": 0}, "cache.ttl: Input should be greater than 0"),
        ({"l1_size_limit": 1000}, "cache.l1_size_limit: Input should be greater than or equal to 1048576"),
        ({"nondeterministic_models": ["gpt-4"]}, "cache.nondeterministic_models: unknown model 'gpt-4'"),
        ({"table": "no spaces"}, "cache.table: String should match pattern"),
        ({"tll": 5}, "cache.tll: unknown field"),
    ],
)
def test_bad_cache_fields_are_named(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**MINIMAL, "cache": section}, environ={})


def test_environment_overrides_single_cache_values_and_keeps_the_rest():
    document = {**MINIMAL, "cache": {"ttl": 60, "nondeterministic_models": ["deepseek-r1"]}}
    environ = {"R1EDGE_CACHE_TABLE": "prod-cache", "R1EDGE_CACHE_L2": "true", "R1EDGE_CACHE_TTL": "120"}
    cache = parse_config(document, environ=environ).cache
    assert (cache.table, cache.l2, cache.ttl) == ("prod-cache", True, 120)
    assert cache.nondeterministic_models == ["deepseek-r1"]
    assert document["cache"] == {"ttl": 60, "nondeterministic_models": ["deepseek-r1"]}  # not modified
    assert parse_config(MINIMAL, environ={"R1EDGE_CACHE_ENABLED": "false"}).cache.enabled is False


def test_a_bad_override_is_named_like_a_bad_field():
    with pytest.raises(ConfigError, match=re.escape("cache.l2: Input should be a valid boolean")):
        parse_config(MINIMAL, environ={"R1EDGE_CACHE_L2": "perhaps"})
