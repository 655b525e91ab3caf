"""The pure parts of resilience: retry classification and waits, the circuit breaker, and
endpoint choice (failover order, latency switching with hysteresis, capacity, forced probes)."""

from __future__ import annotations

import email.utils
import random

import pytest
from fakes import config, endpoint
from pydantic import ValidationError

from r1edge.resilience.balancer import Pool
from r1edge.resilience.breaker import BreakerSettings, CircuitBreaker, State
from r1edge.resilience.load import parse_engine_load
from r1edge.resilience.retry import (
    MAX_WAIT,
    Outcome,
    backoff_delay,
    classify_status,
    parse_retry_after,
    wait_before_retry,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (400, Outcome.CLIENT_FAULT),
        (413, Outcome.CLIENT_FAULT),
        (422, Outcome.CLIENT_FAULT),
        (401, Outcome.MISCONFIGURED),
        (403, Outcome.MISCONFIGURED),
        (404, Outcome.MISCONFIGURED),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
        (409, Outcome.RETRY),
    ],
)
def test_status_classification(status, outcome):
    assert classify_status(status) is outcome


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "7"}, NOW) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, NOW) == 0.25
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(12, abs=1)
    assert parse_retry_after({"retry-after": email.utils.formatdate(NOW - 60, usegmt=True)}, NOW) == 0.0
    for junk in ("soon", "-5", "1.5e", "", "Mon, 99 Foo 2026"):
        assert parse_retry_after({"retry-after": junk}, NOW) is None
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "3"}, NOW) == 3.0
    assert parse_retry_after({}, NOW) is None


def test_retry_after_names_match_in_any_case_and_every_form_is_capped():
    # An OpenAIError's headers are a plain dict with the name as sent: "Retry-After".
    assert parse_retry_after({"Retry-After": "5"}, NOW) == 5.0
    assert parse_retry_after({"Retry-After-Ms": "1500"}, NOW) == 1.5
    assert parse_retry_after({"retry-after": "9" * 20}, NOW) == MAX_WAIT
    assert parse_retry_after({"retry-after-ms": "1e12"}, NOW) == MAX_WAIT
    far = email.utils.formatdate(NOW + 10 * MAX_WAIT, usegmt=True)
    assert parse_retry_after({"retry-after": far}, NOW) == MAX_WAIT


def test_breaker_settings_are_validated_and_frozen():
    with pytest.raises(ValidationError):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ValidationError):
        BreakerSettings(cooldwon=5)
    settings = BreakerSettings()
    with pytest.raises(ValidationError):
        settings.cooldown = 1


def test_full_jitter_backoff_is_capped_and_retry_after_is_a_floor():
    rng = random.Random(7)
    for attempt in range(1, 12):
        delay = backoff_delay(attempt, 0.25, 8.0, rng)
        assert 0.0 <= delay <= min(8.0, 0.25 * 2 ** (attempt - 1))
    assert wait_before_retry(1, 0.25, 8.0, 3.0, rng) >= 3.0
    assert wait_before_retry(1, 0.25, 8.0, None, rng) <= 0.25


def test_breaker_opens_on_consecutive_failures_and_half_opens_after_cooldown():
    b = CircuitBreaker(BreakerSettings(failure_threshold=3, cooldown=10))
    for t in range(2):
        b.record_failure(t)
    assert b.state is State.CLOSED
    b.record_failure(2)
    assert b.state is State.OPEN
    assert not b.allow(5)
    assert b.cooldown_remaining(5) == 7
    assert b.allow(12)  # the probe
    assert b.state is State.HALF_OPEN
    assert not b.allow(12)  # only one probe at a time
    b.record_failure(13)
    assert b.state is State.OPEN
    assert b.allow(23)
    b.record_success(23)
    assert b.state is State.CLOSED


def test_breaker_opens_on_error_ratio_with_minimum_calls():
    b = CircuitBreaker(BreakerSettings(failure_threshold=100, error_ratio=0.5, min_calls=10, window=60))
    for i in range(9):
        (b.record_failure if i % 2 else b.record_success)(i)
    assert b.state is State.CLOSED  # 9 calls: under the minimum
    b.record_failure(9)
    assert b.state is State.OPEN  # 5 of 10 failed


def test_breaker_window_forgets_old_calls():
    b = CircuitBreaker(BreakerSettings(failure_threshold=100, error_ratio=0.5, min_calls=4, window=10))
    for t in range(3):
        b.record_failure(t)
    b.record_success(50)
    b.record_failure(51)
    assert b.state is State.CLOSED  # the early failures fell out of the window


def pool(*eps, **kw) -> Pool:
    return Pool(config(*eps).endpoints, BreakerSettings(failure_threshold=1, cooldown=30), **kw)


def test_failover_before_retrying_the_same_endpoint():
    p = pool(endpoint("a", "cluster"), endpoint("b", "cluster", priority=1))
    assert p.choose("cluster", 0, {}, set())[0].endpoint.name == "a"
    assert p.choose("cluster", 0, {"a": 1}, set())[0].endpoint.name == "b"
    assert p.choose("cluster", 0, {"a": 1}, {"b"})[0].endpoint.name == "a"
    assert p.choose("cluster", 0, {}, {"a", "b"}) == (None, False)


def test_open_endpoints_are_skipped_and_all_open_probes_the_earliest_cooldown():
    # Issue 19: this test asserted the defect — with both open at t=6, a was "force-probed"
    # 24 s before its cooldown ended. Now nothing is chosen before a cooldown ends, and then
    # one probe at a time.
    p = pool(endpoint("a", "cluster"), endpoint("b", "cluster", priority=1))
    p["a"].breaker.record_failure(0)
    assert p.choose("cluster", 1, {}, set())[0].endpoint.name == "b"
    p["b"].breaker.record_failure(5)
    assert p.choose("cluster", 6, {}, set()) == (None, False)  # both open: no one reaches them
    assert p.shortest_cooldown("cluster", 6) == 24  # a opened at 0, cooldown 30
    state, probing = p.choose("cluster", 30, {}, set(), probe_lease=lambda s: 10)
    assert (state.endpoint.name, probing) == ("a", True)  # a's cooldown ended first
    assert state.breaker.probe is not None
    assert state.breaker.probe.until == 40
    assert p.choose("cluster", 31, {}, set()) == (None, False)  # a's probe is out, b still cooling
    assert p.shortest_cooldown("cluster", 31) == 4  # b's cooldown ends at 35, a's probe at 40


def test_with_every_endpoint_open_the_one_whose_cooldown_ended_first_is_probed_not_the_preferred():
    p = pool(endpoint("a", "cluster"), endpoint("b", "cluster", priority=1))
    p["b"].breaker.record_failure(0)
    p["a"].breaker.record_failure(5)
    state, probing = p.choose("cluster", 40, {}, set())  # both cooled down; b's ended at 30, a's at 35
    assert (state.endpoint.name, probing) == ("b", True)
    state, probing = p.choose("cluster", 40, {}, set())  # b's slot is taken: a has its own
    assert (state.endpoint.name, probing) == ("a", True)
    assert p.choose("cluster", 40, {}, set()) == (None, False)


def test_latency_switch_moves_traffic_and_moves_back_only_with_hysteresis():
    p = pool(endpoint("a", "cluster"), endpoint("b", "cluster", priority=1))

    def first() -> str:
        return p.choose("cluster", 0, {}, set())[0].endpoint.name

    p["b"].ttfb = 0.1
    p["a"].ttfb = 0.45
    assert first() == "a"  # under the 500 ms threshold
    p["a"].ttfb = 0.7
    assert first() == "b"  # slow preferred, faster healthy alternative: move
    p["a"].ttfb = 0.45
    assert first() == "b"  # back under the threshold but not under 0.5 * 0.8: stay (no flapping)
    p["a"].ttfb = 0.35
    assert first() == "a"  # recovered below the hysteresis band: move back


def test_ewma_of_time_to_first_byte():
    p = pool(endpoint("a", "cluster"))
    p["a"].observe_ttfb(1.0)
    p["a"].observe_ttfb(0.0)
    assert p["a"].ttfb == pytest.approx(0.8)


def test_endpoint_at_its_concurrency_limit_is_skipped():
    p = pool(endpoint("a", "cluster", max_concurrency=2), endpoint("b", "cluster", priority=1))
    p["a"].in_flight = 2
    assert p.choose("cluster", 0, {}, set())[0].endpoint.name == "b"


def test_engine_load_from_vllm_and_sglang_metrics():
    vllm = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="a"} 0.0\nvllm:num_requests_waiting{model_name="b"} 0.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="a"} 0.42\n'
    )
    assert parse_engine_load(vllm).load == pytest.approx(0.42)
    assert (
        parse_engine_load(vllm.replace("} 0.0\nvllm:num_requests_waiting", "} 2.0\nvllm:num_requests_waiting")).load
        == 1.0
    )
    old = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.66\n"
    assert parse_engine_load(old).kv_usage == pytest.approx(0.66)
    sglang = "# TYPE sglang:token_usage gauge\nsglang:token_usage 0.8\n"
    sglang += "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs 0\n"
    assert parse_engine_load(sglang).load == pytest.approx(0.8)
    assert parse_engine_load("# TYPE other gauge\nother 1\n") is None
    assert parse_engine_load("<html>not metrics</html>") is None


def test_equal_priorities_share_traffic_by_weight():
    p = Pool(
        config(
            endpoint("a", "cluster", weight=3),
            endpoint("b", "cluster", weight=1),
            endpoint("c", "cluster", priority=1, weight=100),
        ).endpoints,
        rng=random.Random(3),
    )
    picks = [p.choose("cluster", 0, {}, set())[0].endpoint.name for _ in range(4000)]
    assert picks.count("c") == 0  # a lower priority never wins while a higher one is available
    assert picks.count("a") / len(picks) == pytest.approx(0.75, abs=0.03)
