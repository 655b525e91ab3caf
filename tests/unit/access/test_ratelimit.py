"""Per-key token buckets: the charge rule, OpenAI's headers, 429 with Retry-After, settling, and —
on moto's DynamoDB — limits that hold across containers (separate limiters sharing one table),
each charge one conditional ``UpdateItem``, including a change by another container between the
two conditional forms. (Races are staged deterministically: moto's in-process backend does not
make a conditional write atomic against threads, which DynamoDB itself does.)"""

from __future__ import annotations

import boto3
import pytest
from awsauth import create_auth_resources
from fakes import MemoryBucketStore
from moto import mock_aws

from r1edge.access.ratelimit import (
    FIELDS,
    DynamoBucketStore,
    Limits,
    LimitStatus,
    RateLimiter,
    charge,
    format_reset,
    remaining,
)
from r1edge.protocol.errors import Overloaded, RateLimited

LIMITS = Limits(requests_per_minute=60, tokens_per_minute=6000)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_charge_rule_is_a_token_bucket():
    # capacity 60/min: one unit costs 1 s; a full bucket (tat <= now) takes up to 60 units at once
    assert charge(None, 1.0, 100.0) == (True, 101.0)
    assert charge(50.0, 1.0, 100.0) == (True, 101.0)  # idle: starts from now, never banks more than full
    assert charge(100.0, 60.0, 100.0) == (True, 160.0)  # the whole bucket
    assert charge(160.0, 1.0, 100.0) == (False, 160.0)  # empty: refused, unchanged
    assert charge(160.0, 1.0, 101.0) == (True, 161.0)  # one second later, one unit is back
    assert charge(130.0, 31.0, 100.0) == (False, 130.0)  # 30 left, 31 asked: all or nothing


def test_remaining_units_follow_tat():
    assert remaining(None, 60, 100.0) == 60
    assert remaining(99.0, 60, 100.0) == 60
    assert remaining(130.0, 60, 100.0) == 30
    assert remaining(190.0, 60, 100.0) == -30  # in debt


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
    assert status.headers()["x-ratelimit-remaining-tokens"] == "100"
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


def test_a_charge_over_the_whole_bucket_is_capped_at_its_capacity():
    limiter = RateLimiter(MemoryBucketStore(), clock=Clock())
    assert limiter.acquire("k", LIMITS, tokens=50_000).tokens == 0
    with pytest.raises(RateLimited):
        limiter.acquire("k", LIMITS, tokens=50_000)


def test_settle_refunds_and_makes_debt():
    clock = Clock()
    limiter = RateLimiter(MemoryBucketStore(), clock=clock)
    limiter.acquire("k", LIMITS, tokens=1000)
    limiter.settle("k", LIMITS, 800)  # used 200 of the 1000 charged
    assert limiter.status("k", LIMITS).tokens == pytest.approx(5800)
    limiter.settle("k", LIMITS, -9000)  # used far more than estimated
    assert limiter.status("k", LIMITS).tokens == pytest.approx(-3200)
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
    containers = [RateLimiter(DynamoBucketStore(table, boto3.client("dynamodb")), clock=clock) for _ in range(3)]
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
    with pytest.raises(RateLimited) as err:
        containers[2].acquire("key_a", Limits(10, 1000), requests=1)
    assert err.value.headers["Retry-After"] == "6"


def test_dynamodb_and_memory_stores_agree(table):
    """The same sequence of charges, settles and clock steps gives the same answers on both."""
    results = []
    for store in (MemoryBucketStore(), DynamoBucketStore(table, boto3.client("dynamodb"))):
        clock = Clock()
        limiter = RateLimiter(store, clock=clock)
        outcome = []
        for step in range(40):
            clock.now += (step % 5) * 0.7
            try:
                status = limiter.acquire("key_x", Limits(5, 300), **({"tokens": 70} if step % 2 else {"requests": 1}))
                outcome.append(("ok", round(status.requests, 3), round(status.tokens, 3)))
            except RateLimited as exc:
                outcome.append((exc.type, exc.headers["Retry-After"]))
            if step % 7 == 0:
                limiter.settle("key_x", Limits(5, 300), 30)
        results.append(outcome)
    assert results[0] == results[1]
    assert {o[0] for o in results[0]} == {"ok", "requests", "tokens"}


class RivalStore(DynamoBucketStore):
    """Makes another container's charge land between this one's two conditional forms, once."""

    def __init__(self, table: str, rival: RateLimiter) -> None:
        super().__init__(table, boto3.client("dynamodb"))
        self.rival = rival
        self.calls: list[str] = []
        real = self.table.update_item

        def update_item(**kwargs):
            form = "in-use" if "#t + :cost" in kwargs["UpdateExpression"] else "idle"
            self.calls.append(form)
            if form == "idle" and self.calls.count("idle") == 1:
                self.rival.acquire("key_c", Limits(2, 100), requests=1)  # the bucket is now in use
            return real(**kwargs)

        self.table.update_item = update_item


def test_a_bucket_changed_between_the_two_forms_is_charged_on_fresh_state(table):
    clock = Clock()
    rival = RateLimiter(DynamoBucketStore(table, boto3.client("dynamodb")), clock=clock)
    store = RivalStore(table, rival)
    mine = RateLimiter(store, clock=clock)
    mine.acquire("key_c", Limits(2, 100), requests=1)
    assert store.calls == ["in-use", "idle", "in-use"]  # idle lost to the rival: charged as in use
    with pytest.raises(RateLimited):
        rival.acquire("key_c", Limits(2, 100), requests=1)  # both requests were counted


def test_endless_contention_is_a_503_not_a_free_pass(table):
    class Flapping(DynamoBucketStore):
        def take(self, bucket_key, field, cost, now):
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "ConditionalCheckFailedException"}}

            class Table:
                def update_item(self, **kwargs):
                    raise ClientError(error, "UpdateItem")

            self.table = Table()
            return super().take(bucket_key, field, cost, now)

    with pytest.raises(Overloaded) as err:
        RateLimiter(Flapping(table, max_tries=3), clock=Clock()).acquire("k", LIMITS, requests=1)
    assert err.value.headers["Retry-After"] == "1"


def test_dynamodb_items_hold_tat_and_a_ttl(table):
    clock = Clock()
    store = DynamoBucketStore(table, boto3.client("dynamodb"))
    limiter = RateLimiter(store, clock=clock)
    limiter.acquire("key_d", LIMITS, tokens=100)
    assert store.load("key_d") == {FIELDS["tokens"]: pytest.approx(clock.now + 1.0)}  # 100 tokens at 100/s
    limiter.settle("key_d", LIMITS, 40)
    assert store.load("key_d")[FIELDS["tokens"]] == pytest.approx(clock.now + 0.6)
    limiter.settle("key_missing", LIMITS, 40)  # no item: a full bucket, nothing to do
    assert store.load("key_missing") == {}
    item = boto3.client("dynamodb").get_item(TableName=table, Key={"bucket_key": {"S": "key_d"}})["Item"]
    assert int(item["expires"]["N"]) > clock.now + 3600


def test_the_default_table_shares_one_client_across_threads(table):
    import threading

    store = DynamoBucketStore(table)  # no client given: the adapter on one low-level client
    limiter = RateLimiter(store, clock=Clock())
    clients = []

    def work():
        limiter.acquire("key_t", LIMITS, requests=1)
        clients.append(store.table.client)

    for _ in range(3):  # one thread after another: moto's backend is not atomic against threads
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert len({id(c) for c in clients}) == 1
    assert limiter.status("key_t", LIMITS).requests == pytest.approx(57)
    assert store.load("key_t")[FIELDS["requests"]] == pytest.approx(1_000_003.0)
