"""Per-key token buckets: refill arithmetic, OpenAI's headers, 429 with Retry-After, and — on
moto's DynamoDB — limits that hold across containers (separate limiters sharing one table),
including a write race settled by the conditional put. (Races are staged deterministically:
moto's in-process backend does not make a conditional write atomic against threads, which
DynamoDB itself does.)"""

from __future__ import annotations

import boto3
import pytest
from awsauth import create_auth_resources
from fakes import MemoryBucketStore
from moto import mock_aws

from r1edge.errors import Overloaded, RateLimited
from r1edge.ratelimit import Buckets, DynamoBucketStore, Limits, LimitStatus, RateLimiter, format_reset, refill, take

LIMITS = Limits(requests_per_minute=60, tokens_per_minute=6000)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_unseen_key_starts_full_and_refills_at_capacity_per_minute():
    full = refill(None, LIMITS, 100.0)
    assert (full.requests, full.tokens) == (60, 6000)
    empty = Buckets(0.0, 0.0, 100.0, 3)
    assert refill(empty, LIMITS, 101.0) == Buckets(1.0, 100.0, 101.0, 3)  # 1 request/s, 100 tokens/s
    assert refill(empty, LIMITS, 100.0 + 3600) == Buckets(60.0, 6000.0, 3700.0, 3)  # capped at capacity
    assert refill(empty, LIMITS, 99.0).requests == 0.0  # a clock behind the stored one refills nothing


def test_take_is_all_or_nothing_and_says_which_limit_and_how_long():
    taken = take(Buckets(0.5, 6000.0, 0.0), LIMITS, 0.0, requests=1, tokens=10)
    assert (taken.refused, taken.buckets) == ("requests", None)
    assert taken.retry_after == pytest.approx(0.5)
    taken = take(Buckets(5.0, 100.0, 0.0), LIMITS, 0.0, requests=1, tokens=400)
    assert taken.refused == "tokens"
    assert taken.retry_after == pytest.approx(3.0)  # 300 tokens at 100/s
    taken = take(Buckets(5.0, 100.0, 0.0), LIMITS, 0.0, requests=1, tokens=100)
    assert taken.refused is None
    assert (taken.buckets.requests, taken.buckets.tokens) == (4.0, 0.0)


def test_a_charge_over_the_whole_bucket_is_capped_at_its_capacity():
    assert take(None, LIMITS, 0.0, tokens=50_000).buckets.tokens == 0.0
    assert take(Buckets(60, 5999, 0.0), LIMITS, 0.0, tokens=50_000).refused == "tokens"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (8.642, "8.65s"), (360, "6m0s")]
)
def test_reset_durations_use_openais_format(seconds, text):
    assert format_reset(seconds) == text


def test_headers_are_openais_six():
    headers = LimitStatus(LIMITS, requests=59.0, tokens=-20.0).headers()
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "0",  # in debt: never negative in the header
        "x-ratelimit-reset-tokens": "1m1s",  # 6020 tokens at 100/s = 60.2 s
    }


def test_limiter_raises_429_of_the_right_type_with_retry_after():
    clock = Clock()
    limiter = RateLimiter(MemoryBucketStore(), clock=clock)
    small = Limits(2, 100)
    limiter.acquire("k", small, requests=1)
    status = limiter.acquire("k", small, requests=1)
    assert status.headers()["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as err:
        limiter.acquire("k", small, requests=1)
    assert (err.value.status, err.value.type, err.value.code) == (429, "requests", "rate_limit_exceeded")
    assert err.value.headers["Retry-After"] == "30"  # one request per 30 s
    assert err.value.headers["x-ratelimit-limit-requests"] == "2"
    clock.now += 30
    limiter.acquire("k", small, requests=1)
    limiter.acquire("k", small, tokens=60)
    with pytest.raises(RateLimited) as err:
        limiter.acquire("k", small, tokens=60)
    assert (err.value.status, err.value.type) == (429, "tokens")
    assert err.value.headers["Retry-After"] == "12"  # 20 tokens missing at 100/60 per second


def test_settle_refunds_and_makes_debt():
    clock = Clock()
    store = MemoryBucketStore()
    limiter = RateLimiter(store, clock=clock)
    limiter.acquire("k", LIMITS, tokens=1000)
    limiter.settle("k", 800)  # used 200 of the 1000 charged
    assert store.items["k"].tokens == 5800
    limiter.settle("k", -9000)  # used far more than estimated
    assert store.items["k"].tokens == -3200
    with pytest.raises(RateLimited) as err:
        limiter.acquire("k", LIMITS, tokens=1)
    assert err.value.headers["Retry-After"] == "33"  # 3201 tokens at 100/s
    clock.now += 33
    limiter.acquire("k", LIMITS, tokens=1)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield create_auth_resources()["R1EDGE_LIMITS_TABLE"]


def test_limits_hold_across_containers_sharing_the_table(table):
    clock = Clock()
    containers = [RateLimiter(DynamoBucketStore(table, boto3.resource("dynamodb")), clock=clock) for _ in range(3)]
    admitted = 0
    for i in range(30):
        try:
            containers[i % 3].acquire("key_a", Limits(10, 1000), requests=1)
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 10
    clock.now += 6  # one request per 6 s
    containers[1].acquire("key_a", Limits(10, 1000), requests=1)
    with pytest.raises(RateLimited):
        containers[2].acquire("key_a", Limits(10, 1000), requests=1)


class RacingStore(DynamoBucketStore):
    """Lets another container write between this one's read and its conditional write, once."""

    def __init__(self, table: str, rival: RateLimiter) -> None:
        super().__init__(table, boto3.resource("dynamodb"))
        self.rival = rival
        self.raced = False
        self.saves: list[bool] = []

    def save(self, bucket_key, buckets, expected_version):
        if not self.raced:
            self.raced = True
            self.rival.acquire(bucket_key, Limits(2, 100), requests=1)
        ok = super().save(bucket_key, buckets, expected_version)
        self.saves.append(ok)
        return ok


def test_a_lost_write_race_is_retried_on_fresh_state(table):
    clock = Clock()
    rival = RateLimiter(DynamoBucketStore(table, boto3.resource("dynamodb")), clock=clock)
    store = RacingStore(table, rival)
    mine = RateLimiter(store, clock=clock)
    mine.acquire("key_c", Limits(2, 100), requests=1)
    assert store.saves == [False, True]  # the first write lost to the rival's; the retry won
    with pytest.raises(RateLimited):
        rival.acquire("key_c", Limits(2, 100), requests=1)  # both requests were counted


def test_endless_contention_is_a_503_not_a_free_pass():
    class AlwaysConflicting(MemoryBucketStore):
        def save(self, bucket_key, buckets, expected_version):
            return False

    with pytest.raises(Overloaded) as err:
        RateLimiter(AlwaysConflicting(), max_tries=3).acquire("k", LIMITS, requests=1)
    assert err.value.headers["Retry-After"] == "1"


def test_dynamodb_settle_bumps_the_version_and_skips_expired_items(table):
    store = DynamoBucketStore(table, boto3.resource("dynamodb"))
    limiter = RateLimiter(store, clock=Clock())
    limiter.acquire("key_d", LIMITS, tokens=100)
    before = store.load("key_d")
    limiter.settle("key_d", 40)
    after = store.load("key_d")
    assert (after.tokens, after.version) == (before.tokens + 40, before.version + 1)
    limiter.settle("key_missing", 40)  # no item: a full bucket, nothing to do
    assert store.load("key_missing") is None
    item = boto3.client("dynamodb").get_item(TableName=table, Key={"bucket_key": {"S": "key_d"}})["Item"]
    assert int(item["expires"]["N"]) > 1_000_000  # TTL attribute set


def test_each_thread_gets_its_own_table_handle(table):
    import threading

    store = DynamoBucketStore(table)  # no resource given: one boto3 session per thread
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.table))
    thread.start()
    thread.join()
    assert store.table is store.table
    assert seen[0] is not store.table
    assert seen[0].name == store.table.name == table
