"""The cache's two levels: L1 diskcache (size cap, eviction, TTL) and L2 DynamoDB (moto, the table
created from template.yaml's own definition), L1→L2 fall-through and L1 fill; and the template's
table, IAM and environment for the routers."""

from __future__ import annotations

import asyncio
import os

import boto3
import pytest
from moto import mock_aws
from run import create_cache_table  # infra/local/run.py
from samlocal import Resolver, function_environment, load_template

from r1edge.cache.response import ResponseCache
from r1edge.cache.stores import DiskStore, Entry
from r1edge.routing.config import Cache

TEMPLATE = load_template()
TABLE = "r1edge-cache-test"
ROUTERS = ["RouterStreamFunction", "RouterBufferedFunction"]


class Clock:
    """A wall clock that moves only when told (epoch seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def completion(text: str) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def dynamodb(monkeypatch):
    """A moto DynamoDB client with the cache table as template.yaml defines it."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    props = TEMPLATE["Resources"]["ResponseCacheTable"]["Properties"]
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            BillingMode=props["BillingMode"],
        )
        client.update_time_to_live(TableName=TABLE, TimeToLiveSpecification=props["TimeToLiveSpecification"])
        yield client


def make_cache(tmp_path, clock, name="l1", **l2):
    return ResponseCache(DiskStore(str(tmp_path / name), Cache().l1_size_limit, clock), wall_clock=clock, **l2)


def test_l1_round_trip_and_expiry_by_the_injected_clock(tmp_path):
    clock = Clock()
    cache = make_cache(tmp_path, clock)
    settings = Cache(ttl=60)
    asyncio.run(cache.store("k", completion("hi"), settings, "t1"))
    entry, level = asyncio.run(cache.lookup("k", settings))
    assert (level, entry.completion["choices"][0]["message"]["content"]) == ("l1", "hi")
    assert entry.expires_at == clock.now + 60
    clock.now += 59.5
    assert asyncio.run(cache.lookup("k", settings)) is not None
    clock.now += 1
    assert asyncio.run(cache.lookup("k", settings)) is None
    cache.close()


def test_l1_size_cap_evicts_least_recently_used_entries(tmp_path):
    limit = 1024 * 1024
    store = DiskStore(str(tmp_path / "small"), limit)
    big = "x" * 40_000  # over diskcache's 32 KB threshold: each value is a file of its own
    for i in range(60):  # 60 × 40 KB = 2.4 MB, over twice the cap
        store.set(f"k{i}", Entry(completion(big + str(i)), 0, 4e9), "t")
        if i >= 1:
            store.get("k0")  # keep k0 recently used
    assert store.cache.volume() <= limit + 64 * 1024
    assert store.get("k1") is None  # the oldest untouched entry went first
    assert store.get("k0") is not None
    assert store.get("k59").completion["choices"][0]["message"]["content"].endswith("59")
    store.close()


def test_l1_size_limit_follows_a_changed_config(tmp_path):
    store = DiskStore(str(tmp_path / "resize"), 4 * 1024 * 1024)
    store.resize(2 * 1024 * 1024)
    assert store.cache.size_limit == 2 * 1024 * 1024
    store.close()


def test_a_broken_l1_is_a_miss_not_an_error(tmp_path):
    clock = Clock()
    cache = make_cache(tmp_path, clock)
    cache.l1.cache.set("k", "{not json")
    assert asyncio.run(cache.lookup("k", Cache())) is None
    cache.close()


def test_l2_is_shared_by_containers_and_fills_l1(tmp_path, dynamodb):
    clock = Clock()
    settings = Cache(l2=True, table=TABLE, ttl=300)
    first = make_cache(tmp_path, clock, "container-a")
    asyncio.run(first.store("k", completion("shared"), settings, "tenant-1"))
    item = dynamodb.get_item(TableName=TABLE, Key={"key": {"S": "k"}})["Item"]
    assert item["expires_at"] == {"N": str(int(clock.now + 300))}
    assert item["tenant"] == {"S": "tenant-1"}

    second = make_cache(tmp_path, clock, "container-b")  # a warm container with an empty L1
    assert second.l1.get("k") is None
    entry, level = asyncio.run(second.lookup("k", settings))
    assert level == "l2"
    assert entry.completion["choices"][0]["message"]["content"] == "shared"
    assert second.l1.get("k") is not None  # filled from L2
    dynamodb.delete_item(TableName=TABLE, Key={"key": {"S": "k"}})
    assert asyncio.run(second.lookup("k", settings))[1] == "l1"
    first.close()
    second.close()


def test_l2_off_by_config_is_never_called(tmp_path, dynamodb):
    clock = Clock()
    cache = make_cache(tmp_path, clock)
    asyncio.run(cache.store("k", completion("local"), Cache(l2=False, table=TABLE), "t"))
    assert dynamodb.scan(TableName=TABLE)["Count"] == 0
    cache.close()


def test_expired_l2_items_are_misses_before_dynamodb_deletes_them(tmp_path, dynamodb):
    clock = Clock()
    settings = Cache(l2=True, table=TABLE, ttl=10)
    writer = make_cache(tmp_path, clock, "a")
    asyncio.run(writer.store("k", completion("old"), settings, "t"))
    clock.now += 11
    reader = make_cache(tmp_path, clock, "b")
    assert asyncio.run(reader.lookup("k", settings)) is None
    assert dynamodb.scan(TableName=TABLE)["Count"] == 1  # still there: DynamoDB's TTL is lazy
    writer.close()
    reader.close()


def test_dynamodb_errors_are_misses_and_skipped_writes(tmp_path, dynamodb):
    clock = Clock()
    settings = Cache(l2=True, table="no-such-table")
    cache = make_cache(tmp_path, clock)
    asyncio.run(cache.store("k", completion("x"), settings, "t"))  # logged, not raised
    cache.l1.cache.clear()
    assert asyncio.run(cache.lookup("k", settings)) is None
    cache.close()


def test_entries_over_the_dynamodb_item_limit_stay_in_l1(tmp_path, dynamodb):
    clock = Clock()
    settings = Cache(l2=True, table=TABLE)
    cache = make_cache(tmp_path, clock)
    asyncio.run(cache.store("k", completion("y" * 500_000), settings, "t"))
    assert dynamodb.scan(TableName=TABLE)["Count"] == 0
    assert asyncio.run(cache.lookup("k", settings))[1] == "l1"
    cache.close()


def test_from_env_uses_r1edge_cache_dir_or_a_fresh_temporary_directory(tmp_path):
    kept = ResponseCache.from_env(Cache(), {"R1EDGE_CACHE_DIR": str(tmp_path / "kept")})
    assert kept.l1.directory == str(tmp_path / "kept")
    kept.close()
    assert (tmp_path / "kept").exists()  # a named directory outlives the process
    fresh = ResponseCache.from_env(Cache(), {})
    other = ResponseCache.from_env(Cache(), {})
    assert fresh.l1.directory != other.l1.directory
    directory = fresh.l1.directory
    fresh.close()
    other.close()
    assert not os.path.exists(directory)


def test_template_table_has_ttl_on_expires_at_and_the_key_schema_the_code_uses():
    props = TEMPLATE["Resources"]["ResponseCacheTable"]["Properties"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["KeySchema"] == [{"AttributeName": "key", "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"


@pytest.mark.parametrize("name", ROUTERS)
def test_routers_get_the_table_with_get_and_put_only(name):
    attrs = {
        "EdgeFunctionUrl.FunctionUrl": "https://edge.lambda-url.us-east-1.on.aws/",
        "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:123456789012:function:edge",
        "ResponseCacheTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/cache",
        **{f"{r}.Arn": f"arn:aws:placeholder:::{r}" for r in TEMPLATE["Resources"] if r != "ResponseCacheTable"},
    }
    resolver = Resolver(TEMPLATE, attrs)
    [policy] = resolver.resolve(TEMPLATE["Resources"][name]["Properties"]["Policies"])
    [statement] = [s for s in policy["Statement"] if s["Sid"] == "ResponseCache"]
    assert sorted(statement["Action"]) == ["dynamodb:GetItem", "dynamodb:PutItem"]
    assert statement["Resource"] == attrs["ResponseCacheTable.Arn"]
    env = function_environment(TEMPLATE, name, resolver)
    assert env["R1EDGE_CACHE_TABLE"] == "ResponseCacheTable"
    assert env["R1EDGE_CACHE_L2"] == "true"
    assert env["R1EDGE_CACHE_TTL"] == "3600"


def test_the_local_stack_creates_the_table_the_template_defines(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    props = TEMPLATE["Resources"]["ResponseCacheTable"]["Properties"]
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        name = create_cache_table(client, "local-cache")
        table = client.describe_table(TableName=name)["Table"]
        ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert table["KeySchema"] == props["KeySchema"]
    assert table["AttributeDefinitions"] == props["AttributeDefinitions"]
    assert table["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
    assert (ttl["AttributeName"], ttl["TimeToLiveStatus"]) == ("expires_at", "ENABLED")
