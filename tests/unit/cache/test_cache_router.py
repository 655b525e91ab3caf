"""The response cache in the router (scripted upstreams that count their calls, no sockets): hits
and their headers, JSON↔SSE replay, what splits entries, what is never stored, Cache-Control,
TTL by an injected clock, tenant isolation, and coalescing of identical requests in flight."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fakes import FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse, sse_reply

from r1edge.apps.router import create_app
from r1edge.cache.key import Policy
from r1edge.cache.response import ResponseCache
from r1edge.cache.stores import DiskStore
from r1edge.observe.metrics import Recorder
from r1edge.protocol.errors import UpstreamTimeout
from r1edge.protocol.sse import parse_events as sse_events
from r1edge.protocol.validation import validate_chat_request
from r1edge.routing.config import Cache
from r1edge.routing.gateway import Gateway

SIMPLE = [{"role": "user", "content": "Say hello to my friend Anna."}]
BODY = {"model": "auto", "messages": SIMPLE, "temperature": 0, "max_tokens": 16}
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


class Wall:
    """An epoch clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Tenants:
    """Sets ``request.state.tenant`` from ``x-test-tenant``, as API-key authentication will."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            tenant = dict(scope["headers"]).get(b"x-test-tenant")
            if tenant:
                scope["state"] = {**scope.get("state", {}), "tenant": tenant.decode()}
        await self.app(scope, receive, send)


def routing(**cache):
    return config(
        endpoint("edge-a", "edge"),
        endpoint("r1-a", "cluster"),
        cache=cache,
        retry={"max_attempts": 1},
        cascade={"threshold": None},
    )


def make_cache(tmp_path, wall, name="l1"):
    return ResponseCache(DiskStore(str(tmp_path / name), Cache().l1_size_limit, wall), wall_clock=wall)


def make_app(fake, tmp_path, wall=None, name="l1", **cache):
    wall = wall or Wall()
    app = create_app(routing(**cache), fake.upstream(), cache=make_cache(tmp_path, wall, name), **FakeClock().options())
    return Tenants(app)


def client_for(app):
    from starlette.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


def replies(*contents: str, **message):
    return [json_reply(completion(c, **message)) for c in contents]


def content(response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def stream_text(response) -> tuple[str, str, list]:
    """(content, reasoning, events) of an SSE answer."""
    events = sse_events(response.content)
    text = reasoning = ""
    for event in events:
        for choice in event.get("choices", []) if isinstance(event, dict) else []:
            text += choice["delta"].get("content") or ""
            reasoning += choice["delta"].get("reasoning_content") or ""
    return text, reasoning, events


def test_a_repeat_is_answered_from_the_cache_without_an_upstream_call(tmp_path):
    fake = FakeUpstream({"edge-a": replies("first", "second")})
    with client_for(make_app(fake, tmp_path)) as client:
        miss = client.post("/v1/chat/completions", json=BODY)
        hit = client.post("/v1/chat/completions", json=BODY)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["x-r1edge-route"] == "edge"
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-r1edge-route"] == "cache"
    assert hit.headers["x-r1edge-attempts"] == "0"
    assert hit.headers["x-r1edge-reason"] == "hit:l1"
    assert "x-r1edge-upstream" not in hit.headers
    assert content(hit) == content(miss) == "first"
    assert hit.json() == miss.json()
    assert len(fake.calls) == 1


def test_a_json_answer_is_replayed_as_sse_with_reasoning_and_usage(tmp_path):
    fake = FakeUpstream({"edge-a": replies("Hello Anna!", reasoning_content="Greet her.")})
    with client_for(make_app(fake, tmp_path)) as client:
        client.post("/v1/chat/completions", json=BODY)
        streamed = client.post(
            "/v1/chat/completions", json={**BODY, "stream": True, "stream_options": {"include_usage": True}}
        )
    assert streamed.headers["x-cache"] == "HIT"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    text, reasoning, events = stream_text(streamed)
    assert (text, reasoning) == ("Hello Anna!", "Greet her.")
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert [e["choices"][0]["finish_reason"] for e in events[:-2]][-1] == "stop"
    assert len(fake.calls) == 1


def test_a_streamed_answer_is_replayed_as_json_with_reasoning_and_usage(tmp_path):
    usage_chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    body = sse(
        chunk(reasoning="Greet "),
        chunk(reasoning="her."),
        chunk("Hello "),
        chunk("Anna!"),
        chunk(finish_reason="stop"),
        {**usage_chunk, "usage": USAGE},
    )
    fake = FakeUpstream({"edge-a": [sse_reply(body)]})
    with client_for(make_app(fake, tmp_path)) as client:
        streamed = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        hit = client.post("/v1/chat/completions", json=BODY)
    assert streamed.headers["x-cache"] == "MISS"
    assert stream_text(streamed)[:2] == ("Hello Anna!", "Greet her.")
    assert hit.headers["x-cache"] == "HIT"
    message = hit.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello Anna!", "reasoning_content": "Greet her."}
    assert hit.json()["choices"][0]["finish_reason"] == "stop"
    assert hit.json()["usage"] == USAGE
    assert hit.json()["object"] == "chat.completion"
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"max_tokens": 17},
        {"temperature": 0.5, "seed": 1},
        {"model": "edge"},
        {"stop": ["!"]},
        {"messages": [{"role": "user", "content": "Say hello to my friend Ann."}]},
    ],
)
def test_requests_differing_in_one_parameter_never_share_an_entry(tmp_path, other):
    fake = FakeUpstream({"edge-a": replies("one", "two", "three")})
    with client_for(make_app(fake, tmp_path)) as client:
        a = client.post("/v1/chat/completions", json=BODY)
        b = client.post("/v1/chat/completions", json={**BODY, **other})
        again = client.post("/v1/chat/completions", json={**BODY, **other})
    assert (a.headers["x-cache"], b.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "MISS", "HIT")
    assert (content(a), content(b), content(again)) == ("one", "two", "two")
    assert len(fake.calls) == 2


def test_non_deterministic_requests_bypass_the_cache(tmp_path):
    fake = FakeUpstream({"edge-a": replies("one", "two")})
    unset = {k: v for k, v in BODY.items() if k != "temperature"}
    with client_for(make_app(fake, tmp_path)) as client:
        answers = [client.post("/v1/chat/completions", json=unset) for _ in range(2)]
    assert [a.headers["x-cache"] for a in answers] == ["BYPASS", "BYPASS"]
    assert [content(a) for a in answers] == ["one", "two"]
    assert len(fake.calls) == 2


def test_the_per_model_switch_caches_non_deterministic_requests(tmp_path):
    fake = FakeUpstream({"r1-a": replies("one", "two"), "edge-a": replies("edge")})
    hot = {**BODY, "model": "deepseek-r1", "temperature": 0.6}
    with client_for(make_app(fake, tmp_path, nondeterministic_models=["deepseek-r1"])) as client:
        answers = [client.post("/v1/chat/completions", json=hot) for _ in range(2)]
        edge = client.post("/v1/chat/completions", json={**hot, "model": "edge"})
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert edge.headers["x-cache"] == "BYPASS"


def test_cache_disabled_sends_no_x_cache_header_and_always_goes_upstream(tmp_path):
    fake = FakeUpstream({"edge-a": replies("one", "two")})
    with client_for(make_app(fake, tmp_path, enabled=False)) as client:
        answers = [client.post("/v1/chat/completions", json=BODY) for _ in range(2)]
    assert ["x-cache" in a.headers for a in answers] == [False, False]
    assert len(fake.calls) == 2


@pytest.mark.parametrize(
    "upstream",
    [
        [sse_reply([sse(chunk("Hel"), done=False)], error=httpx.ReadError("cut"))],  # cut mid-answer
        [sse_reply(sse(chunk("Hel"), {"error": {"message": "engine died"}}))],  # error event
        [sse_reply(sse(chunk("Hel"), chunk("lo")))],  # [DONE] without any finish_reason
        [sse_reply(sse(chunk("Hel"), chunk(finish_reason="content_filter")))],  # not a complete answer
    ],
)
def test_partial_or_failed_streams_are_never_stored(tmp_path, upstream):
    fake = FakeUpstream({"edge-a": [*upstream, json_reply(completion("whole"))]})
    with client_for(make_app(fake, tmp_path)) as client:
        first = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        second = client.post("/v1/chat/completions", json=BODY)
        third = client.post("/v1/chat/completions", json=BODY)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "MISS"
    assert content(second) == "whole"
    assert third.headers["x-cache"] == "HIT"
    assert len(fake.calls) == 2


@pytest.mark.parametrize("finish", ["tool_calls", "content_filter", None])
def test_json_answers_that_did_not_stop_or_hit_the_length_limit_are_not_stored(tmp_path, finish):
    odd = completion("odd")
    odd["choices"][0]["finish_reason"] = finish
    fake = FakeUpstream({"edge-a": [json_reply(odd), json_reply(completion("fine"))]})
    with client_for(make_app(fake, tmp_path)) as client:
        client.post("/v1/chat/completions", json=BODY)
        second = client.post("/v1/chat/completions", json=BODY)
    assert second.headers["x-cache"] == "MISS"
    assert content(second) == "fine"


def test_an_upstream_error_is_not_stored(tmp_path):
    fake = FakeUpstream({"edge-a": [json_reply({"error": {"message": "busy"}}, 503), json_reply(completion("ok"))]})
    with client_for(make_app(fake, tmp_path)) as client:
        failed = client.post("/v1/chat/completions", json={**BODY, "model": "edge"})
        ok = client.post("/v1/chat/completions", json={**BODY, "model": "edge"})
    assert failed.status_code == 503
    assert (ok.status_code, ok.headers["x-cache"], content(ok)) == (200, "MISS", "ok")


def test_a_stream_the_client_leaves_is_not_stored(tmp_path):
    wall = Wall()
    cache = make_cache(tmp_path, wall)
    closed = []
    settled = []

    async def upstream():
        try:
            yield b"data: " + json.dumps(chunk("Hel")).encode() + b"\n\n"
            yield b"data: " + json.dumps(chunk("lo", finish_reason="stop")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            closed.append(True)

    async def leave_early():
        recorded = cache._recorded(upstream(), "k", Policy(True, True), Cache(), "t", settled.append)
        first = await recorded.__anext__()
        await recorded.aclose()  # what Starlette does when the client goes away
        return first

    assert b"Hel" in asyncio.run(leave_early())
    assert closed == [True]
    assert settled == [None]
    assert asyncio.run(cache.lookup("k", Cache())) is None
    cache.close()


def test_no_cache_skips_the_lookup_but_refreshes_the_entry(tmp_path):
    fake = FakeUpstream({"edge-a": replies("old", "new", "never")})
    with client_for(make_app(fake, tmp_path)) as client:
        client.post("/v1/chat/completions", json=BODY)
        fresh = client.post("/v1/chat/completions", json=BODY, headers={"cache-control": "no-cache"})
        after = client.post("/v1/chat/completions", json=BODY)
    assert (fresh.headers["x-cache"], content(fresh)) == ("MISS", "new")
    assert (after.headers["x-cache"], content(after)) == ("HIT", "new")
    assert len(fake.calls) == 2


def test_no_store_skips_the_store_but_may_use_an_entry(tmp_path):
    fake = FakeUpstream({"edge-a": replies("one", "two", "three")})
    with client_for(make_app(fake, tmp_path)) as client:
        first = client.post("/v1/chat/completions", json=BODY, headers={"cache-control": "no-store"})
        second = client.post("/v1/chat/completions", json=BODY)
        third = client.post("/v1/chat/completions", json=BODY, headers={"Cache-Control": "No-Store"})
    assert (first.headers["x-cache"], second.headers["x-cache"], third.headers["x-cache"]) == ("MISS", "MISS", "HIT")
    assert content(third) == "two"
    assert len(fake.calls) == 2


def test_both_directives_bypass_entirely(tmp_path):
    fake = FakeUpstream({"edge-a": replies("one", "two")})
    with client_for(make_app(fake, tmp_path)) as client:
        client.post("/v1/chat/completions", json=BODY)
        both = client.post("/v1/chat/completions", json=BODY, headers={"cache-control": "no-cache, no-store"})
    assert both.headers["x-cache"] == "BYPASS"
    assert content(both) == "two"


def test_entries_expire_after_the_ttl_by_the_injected_clock(tmp_path):
    wall = Wall()
    fake = FakeUpstream({"edge-a": replies("one", "two")})
    with client_for(make_app(fake, tmp_path, wall, ttl=60)) as client:
        client.post("/v1/chat/completions", json=BODY)
        wall.now += 30
        hit = client.post("/v1/chat/completions", json=BODY)
        wall.now += 31
        expired = client.post("/v1/chat/completions", json=BODY)
    assert (hit.headers["x-cache"], hit.headers["age"]) == ("HIT", "30")
    assert (expired.headers["x-cache"], content(expired)) == ("MISS", "two")


def test_one_tenants_entry_is_never_served_to_another(tmp_path):
    fake = FakeUpstream({"edge-a": replies("for alice", "for bob")})
    with client_for(make_app(fake, tmp_path)) as client:
        alice = client.post("/v1/chat/completions", json=BODY, headers={"x-test-tenant": "alice"})
        bob = client.post("/v1/chat/completions", json=BODY, headers={"x-test-tenant": "bob"})
        alice_again = client.post("/v1/chat/completions", json=BODY, headers={"x-test-tenant": "alice"})
        anonymous = client.post("/v1/chat/completions", json=BODY)
    assert (content(alice), content(bob), content(alice_again)) == ("for alice", "for bob", "for alice")
    assert (bob.headers["x-cache"], alice_again.headers["x-cache"]) == ("MISS", "HIT")
    assert anonymous.headers["x-cache"] == "MISS"
    assert len(fake.calls) == 3


def test_headers_do_not_tell_a_tenant_whether_another_asked_the_same(tmp_path):
    def bobs_headers(alice_asks_first: bool, name: str) -> dict[str, str]:
        fake = FakeUpstream({"edge-a": replies("answer")})
        with client_for(make_app(fake, tmp_path, name=name)) as client:
            if alice_asks_first:
                client.post("/v1/chat/completions", json=BODY, headers={"x-test-tenant": "alice"})
            bob = client.post(
                "/v1/chat/completions", json=BODY, headers={"x-test-tenant": "bob", "x-request-id": "bob-1"}
            )
        return dict(bob.headers)

    assert bobs_headers(True, "a") == bobs_headers(False, "b")


# Coalescing: identical requests arriving together make one upstream call.


class Gate:
    """An upstream reply that waits until released, counting the calls that reached it."""

    def __init__(self, *outcomes: httpx.Response) -> None:
        self.outcomes = list(outcomes)
        self.released = asyncio.Event()
        self.reached = asyncio.Event()  # set by the first call
        self.calls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.reached.set()
        await self.released.wait()
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        return outcome(request) if callable(outcome) else outcome


def shared_answer(request: httpx.Request) -> httpx.Response:
    """ "shared" as JSON, or as a stream when the request asks for one."""
    if json.loads(request.content).get("stream"):
        return sse_reply(sse(chunk("sha"), chunk("red"), chunk(finish_reason="stop")))
    return json_reply(completion("shared"))


async def until(event: asyncio.Event, timeout: float = 10.0) -> None:
    """Wait for ``event``; ``timeout`` (seconds) only bounds a failing test."""
    await asyncio.wait_for(event.wait(), timeout)


def looked_up(cache: ResponseCache, requests: int) -> asyncio.Event:
    """An event set once ``requests`` lookups in ``cache`` have missed or hit. After its lookup
    a request goes on, without yielding to the event loop, to wait for the identical request in
    flight (or to lead it): when the event's waiter runs, all of them are in place."""
    arrived = asyncio.Event()
    lookup = cache.lookup
    count = 0

    async def counted(key, settings):
        nonlocal count
        found = await lookup(key, settings)
        count += 1
        if count == requests:
            arrived.set()
        return found

    cache.lookup = counted  # type: ignore[method-assign]
    return arrived


async def concurrent(app, bodies, on_started):
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=b)) for b in bodies]
        await on_started()
        return await asyncio.gather(*tasks)


def test_identical_requests_in_flight_make_one_upstream_call(tmp_path):
    gate = Gate(shared_answer)
    fake = FakeUpstream({"edge-a": [gate]})
    cache = make_cache(tmp_path, Wall())
    all_five = looked_up(cache, 5)
    app = create_app(routing(), fake.upstream(), cache=cache, **FakeClock().options())

    async def release():
        await until(gate.reached)
        await until(all_five)  # one leads the flight, the other four are waiting on it
        assert len(cache.flights) == 1
        gate.released.set()

    bodies = [BODY, BODY, {**BODY, "stream": True}, BODY, {**BODY, "stream": True}]
    answers = asyncio.run(concurrent(app, bodies, release))
    assert gate.calls == 1
    assert len(fake.calls) == 1
    assert sorted(a.headers["x-cache"] for a in answers) == ["HIT", "HIT", "HIT", "HIT", "MISS"]
    coalesced = [a for a in answers if a.headers["x-cache"] == "HIT"]
    assert {a.headers["x-r1edge-reason"] for a in coalesced} == {"coalesced"}
    for body, answer in zip(bodies, answers, strict=True):
        text = stream_text(answer)[0] if body.get("stream") else content(answer)
        assert text == "shared"
    assert cache.flights == {}


def test_when_the_request_in_flight_fails_a_waiting_one_goes_upstream(tmp_path):
    gate = Gate(json_reply({"error": {"message": "down"}}, 500), json_reply(completion("second try")))
    fake = FakeUpstream({"edge-a": [gate]})
    cache = make_cache(tmp_path, Wall())
    all_three = looked_up(cache, 3)
    app = create_app(
        config(endpoint("edge-a", "edge"), retry={"max_attempts": 1}),
        fake.upstream(),
        cache=cache,
        **FakeClock().options(),
    )

    async def release():
        await until(gate.reached)
        await until(all_three)  # one leads the flight, the other two are waiting on it
        gate.released.set()

    answers = asyncio.run(concurrent(app, [{**BODY, "model": "edge"}] * 3, release))
    assert gate.calls == 2
    assert sorted(a.status_code for a in answers) == [200, 200, 502]
    ok = sorted(a.headers["x-cache"] for a in answers if a.status_code == 200)
    assert ok == ["HIT", "MISS"]
    assert {content(a) for a in answers if a.status_code == 200} == {"second try"}


def test_a_waiting_request_is_bounded_by_its_own_deadline(tmp_path):
    gate = Gate(json_reply(completion("late")))
    fake = FakeUpstream({"edge-a": [gate]})
    clock = FakeClock()
    gateway = Gateway(
        routing(), fake.upstream(), recorder=Recorder("router"), clock=clock, sleep=clock.sleep, wall_clock=clock.wall
    )
    cache = make_cache(tmp_path, Wall())
    request = validate_chat_request(BODY)

    async def scenario():
        leader = asyncio.create_task(cache.complete(gateway, request, "t", None, "r1", deadline=30))
        await until(gate.reached)
        with pytest.raises(UpstreamTimeout) as waited:
            await cache.complete(gateway, request, "t", None, "r2", deadline=0.1)
        gate.released.set()
        return waited.value, await leader

    error, answer = asyncio.run(scenario())
    assert error.status == 504
    assert answer.completion["choices"][0]["message"]["content"] == "late"
    assert gate.calls == 1


def test_a_stream_over_the_entry_limit_is_relayed_whole_and_not_stored(tmp_path, monkeypatch):
    from r1edge.cache import response as cache_response

    monkeypatch.setattr(cache_response, "MAX_ENTRY_BYTES", 2048)
    words = [f"w{i} " for i in range(200)]  # about 25 KiB of SSE, far over the 2 KiB limit
    long = sse(*(chunk(w) for w in words), chunk(finish_reason="stop"))
    fake = FakeUpstream({"edge-a": [sse_reply(long), json_reply(completion("whole"))]})
    with client_for(make_app(fake, tmp_path)) as client:
        streamed = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        again = client.post("/v1/chat/completions", json=BODY)
    assert stream_text(streamed)[0] == "".join(words)  # the client still gets every word
    assert stream_text(streamed)[2][-1] == "[DONE]"
    assert (again.headers["x-cache"], content(again)) == ("MISS", "whole")  # nothing was stored
    assert len(fake.calls) == 2
