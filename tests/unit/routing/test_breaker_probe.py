"""The breaker sheds load (issue 19): with every endpoint of a tier open, one half-open probe per
endpoint goes upstream across all concurrent requests of the router; the others fail fast with
503 ``overloaded`` and ``Retry-After``; the probe's slot is freed however its attempt ends.

Requests run concurrently through the router app (``httpx.ASGITransport``); the probe's upstream
reply is held by a :class:`Gate` until the test releases it, so nothing depends on timing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fakes import FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse, sse_reply

from r1edge.apps.router import create_app

CHAT = "/v1/chat/completions"
BREAKER = {"failure_threshold": 1, "cooldown": 30}
TIMEOUTS = {"connect": 2, "first_byte": 8}  # a probe's attempt ends within 10 s


def body(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": f"question {i}"}], **extra}


class Gate:
    """An upstream reply that counts the calls reaching it and holds each until released."""

    def __init__(self, *outcomes: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.released = asyncio.Event()
        self.changed = asyncio.Event()  # set on every call (a waiter clears it)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.changed.set()
        await self.released.wait()
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        return outcome(request) if callable(outcome) else outcome


async def until(condition: Callable[[], bool], *events: asyncio.Event) -> None:
    """Wait until ``condition()`` holds, re-checking whenever one of ``events`` is set; the
    10 s bound only ends a failing test."""

    async def loop() -> None:
        while not condition():
            waits = [asyncio.create_task(e.wait()) for e in events]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            for e in events:
                e.clear()

    await asyncio.wait_for(loop(), 10)


def router(fake: FakeUpstream, clock: FakeClock, **settings: Any):
    cfg = config(
        endpoint("r1-a", "cluster", timeouts=TIMEOUTS),
        breaker=BREAKER,
        retry={"max_attempts": 1},
        cache={"enabled": False},
        **settings,
    )
    return create_app(cfg, fake.upstream(), **clock.options())


async def run(app, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        return await scenario(client)


async def open_breaker(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """One failing request opens the breaker (threshold 1); then the cooldown passes."""
    first = await client.post(CHAT, json=body())
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "30"
    clock.offset += 31


async def burst(
    client: httpx.AsyncClient, gate: Gate, bodies: list[dict[str, Any]]
) -> tuple[list[httpx.Response], int]:
    """Send ``bodies`` at once; once every request has either answered or reached the gate,
    note the upstream calls, release the gate and collect every answer."""
    changed = asyncio.Event()
    tasks = [asyncio.create_task(client.post(CHAT, json=b)) for b in bodies]
    for task in tasks:
        task.add_done_callback(lambda _: changed.set())
    await until(lambda: gate.calls + sum(t.done() for t in tasks) == len(tasks), changed, gate.changed)
    calls_while_held = gate.calls
    gate.released.set()
    return list(await asyncio.gather(*tasks)), calls_while_held


def test_a_20_request_burst_at_a_half_open_endpoint_makes_exactly_one_upstream_call():
    clock = FakeClock()
    gate = Gate(json_reply(completion("recovered")))
    fake = FakeUpstream({"r1-a": [json_reply({"error": {"message": "boom"}}, 500), gate]})
    app = router(fake, clock)

    async def scenario(client: httpx.AsyncClient):
        await open_breaker(client, clock)
        answers, held = await burst(client, gate, [body(i) for i in range(20)])
        burst_calls = gate.calls
        after = await client.post(CHAT, json=body(99))
        return answers, held, burst_calls, after

    answers, held, burst_calls, after = asyncio.run(run(app, scenario))
    assert held == 1  # one probe upstream while it was out
    assert burst_calls == 1  # and none after it came back
    ok = [a for a in answers if a.status_code == 200]
    shed = [a for a in answers if a.status_code == 503]
    assert (len(ok), len(shed)) == (1, 19)
    assert ok[0].json()["choices"][0]["message"]["content"] == "recovered"
    for answer in shed:
        assert answer.json()["error"]["code"] == "overloaded"
        assert answer.json()["error"]["type"] == "server_error"
        assert answer.headers["Retry-After"] == "10"  # the probe's attempt ends within connect + first_byte
        assert answer.headers["x-r1edge-attempts"] == "0"
    # the probe succeeded: the breaker is closed and the next request goes straight through
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "recovered"
    assert app.state.gateway.pool["r1-a"].breaker.state.value == "closed"
    assert len(fake.calls) == 3  # the failure that opened it, the probe, the request after


def test_no_request_reaches_an_open_endpoint_before_its_cooldown_ends():
    clock = FakeClock()
    fake = FakeUpstream(
        {
            "r1-a": [json_reply({"error": {"message": "boom"}}, 500), json_reply(completion("a"))],
            "r1-b": [json_reply({"error": {"message": "boom"}}, 500), json_reply(completion("b"))],
        }
    )
    cfg = config(
        endpoint("r1-a", "cluster", timeouts=TIMEOUTS),
        endpoint("r1-b", "cluster", priority=1, timeouts=TIMEOUTS),
        breaker={"failure_threshold": 1, "cooldown": 60},
        retry={"max_attempts": 1},
        cache={"enabled": False},
    )
    app = create_app(cfg, fake.upstream(), **clock.options())

    async def scenario(client: httpx.AsyncClient):
        first = await client.post(CHAT, json=body(1))  # a fails, b fails: both open
        clock.offset += 10
        during = await client.post(CHAT, json=body(2))  # 50 s of a's cooldown left
        calls_during = len(fake.calls)
        clock.offset += 51  # both cooldowns are over; a's ended first (it opened first): a is probed
        after = await client.post(CHAT, json=body(3))
        return first, during, calls_during, after

    first, during, calls_during, after = asyncio.run(run(app, scenario))
    assert first.status_code == 503
    assert during.status_code == 503
    assert during.json()["error"]["code"] == "overloaded"
    assert during.headers["Retry-After"] == "50"  # a's cooldown left (b's: 50 s too, it opened with a)
    assert calls_during == 2  # nothing went upstream while both were open
    assert after.status_code == 200
    assert after.headers["x-r1edge-upstream"] == "r1-a"
    assert [c.url.host for c in fake.calls] == ["r1-a", "r1-b", "r1-a"]


def test_a_failed_probe_reopens_the_breaker_for_a_new_cooldown_and_sends_nothing_more():
    clock = FakeClock()
    gate = Gate(json_reply({"error": {"message": "still down"}}, 503))
    fake = FakeUpstream({"r1-a": [json_reply({"error": {"message": "boom"}}, 500), gate]})
    app = router(fake, clock)

    async def scenario(client: httpx.AsyncClient):
        await open_breaker(client, clock)
        answers, held = await burst(client, gate, [body(i) for i in range(5)])
        again = await client.post(CHAT, json=body(9))
        return answers, held, again

    answers, held, again = asyncio.run(run(app, scenario))
    assert held == 1
    assert sorted(a.status_code for a in answers) == [503] * 5
    # the probe's own answer: its failure re-opened the breaker, with a full cooldown ahead
    assert sorted(a.headers["Retry-After"] for a in answers) == ["10"] * 4 + ["30"]
    assert again.status_code == 503
    assert again.headers["Retry-After"] == "30"
    assert gate.calls == 1  # the request after the failed probe did not reach the endpoint
    assert app.state.gateway.pool["r1-a"].breaker.state.value == "open"


def test_a_cancelled_probe_frees_the_slot_for_the_next_request():
    clock = FakeClock()
    gate = Gate(json_reply(completion("recovered")))
    fake = FakeUpstream({"r1-a": [json_reply({"error": {"message": "boom"}}, 500), gate]})
    app = router(fake, clock)

    async def scenario(client: httpx.AsyncClient):
        await open_breaker(client, clock)
        probe = asyncio.create_task(client.post(CHAT, json=body(1)))
        await until(lambda: gate.calls == 1, gate.changed)
        shed = await client.post(CHAT, json=body(2))  # the probe is out
        probe.cancel()  # the client gives up while the probe's reply is held
        await asyncio.gather(probe, return_exceptions=True)
        gate.released.set()
        retried = await client.post(CHAT, json=body(3))  # no cooldown left: it may probe
        return shed, retried

    shed, retried = asyncio.run(run(app, scenario))
    assert shed.status_code == 503
    assert retried.status_code == 200
    assert gate.calls == 2
    assert app.state.gateway.pool["r1-a"].breaker.state.value == "closed"


def test_a_probe_answered_with_a_client_fault_frees_the_slot():
    clock = FakeClock()
    fault = json_reply({"error": {"message": "bad field", "type": "invalid_request_error"}}, 400)
    fake = FakeUpstream(
        {"r1-a": [json_reply({"error": {"message": "boom"}}, 500), fault, json_reply(completion("ok"))]}
    )
    app = router(fake, clock)

    async def scenario(client: httpx.AsyncClient):
        await open_breaker(client, clock)
        return await client.post(CHAT, json=body(1)), await client.post(CHAT, json=body(2))

    relayed, next_one = asyncio.run(run(app, scenario))
    assert relayed.status_code == 400  # relayed; says nothing about the endpoint's health
    assert next_one.status_code == 200  # the slot was given back: the next request probed
    assert len(fake.calls) == 3


def test_a_streamed_probe_abandoned_before_its_first_token_frees_the_slot():
    clock = FakeClock()
    gate = Gate(lambda request: sse_reply(sse(chunk("hi"), chunk(finish_reason="stop"))))
    fake = FakeUpstream({"r1-a": [json_reply({"error": {"message": "boom"}}, 500), gate]})
    app = router(fake, clock)
    stream = body(1, stream=True)

    async def scenario(client: httpx.AsyncClient):
        await open_breaker(client, clock)
        probe = asyncio.create_task(client.post(CHAT, json=stream))
        await until(lambda: gate.calls == 1, gate.changed)
        shed = await client.post(CHAT, json=body(2, stream=True))
        probe.cancel()  # the client hangs up before the first token
        await asyncio.gather(probe, return_exceptions=True)
        gate.released.set()
        return shed, await client.post(CHAT, json=body(3, stream=True))

    shed, retried = asyncio.run(run(app, scenario))
    assert shed.status_code == 503
    assert shed.json()["error"]["code"] == "overloaded"
    assert retried.status_code == 200
    events = [e for e in retried.text.split("\n\n") if e.startswith("data: ")]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "hi"
    assert events[-1] == "data: [DONE]"
    assert gate.calls == 2
