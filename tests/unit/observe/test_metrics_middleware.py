"""The metrics middleware's time to first token: the first body chunk that completes an SSE event
with data (read by the one SSE codec), never a comment; JSON answers have none."""

from __future__ import annotations

import asyncio
import contextlib

from r1edge.observe.metrics import MetricsMiddleware


class Recording:
    def __init__(self) -> None:
        self.firsts: list[float] = []
        self.requests: list[tuple] = []

    def request(self, *args) -> None:
        self.requests.append(args)

    def first_token(self, tier: str, endpoint: str, seconds: float) -> None:
        self.firsts.append(seconds)

    def cache_lookup(self, result: str) -> None:
        pass

    def flush(self) -> int:
        return 0


def run(bodies: list[bytes], content_type: bytes = b"text/event-stream") -> list[float]:
    now = [0.0]

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for body in bodies:
            now[0] += 1.0
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        pass

    recorder = Recording()
    middleware = MetricsMiddleware(app, recorder, clock=lambda: now[0])
    asyncio.run(middleware({"type": "http", "path": "/v1/chat/completions"}, None, send))
    assert len(recorder.requests) == 1
    return recorder.firsts


def test_comments_do_not_count_the_first_event_does():
    assert run([b": keep-alive\n\n", b"\r\n: ping\r\n\r\n", b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]) == [3.0]


def test_a_comment_and_an_event_in_one_chunk_count_at_that_chunk():
    assert run([b": keep-alive\n\ndata: {}\n\n"]) == [1.0]


def test_an_event_cut_across_chunks_counts_when_it_is_complete():
    assert run([b"data: {", b'"a": 1}\n', b"\n"]) == [3.0]


def test_json_answers_have_no_first_token():
    assert run([b'{"a": 1}'], b"application/json") == []


def status_of(app) -> int:
    """The status the middleware records for one request to ``app``, whose client has left
    (``receive`` answers ``http.disconnect``)."""

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    recorder = Recording()

    async def run_once():
        with contextlib.suppress(RuntimeError):  # the app's own error goes on up
            await MetricsMiddleware(app, recorder, clock=lambda: 0.0)({"type": "http", "path": "/x"}, receive, send)

    asyncio.run(run_once())
    [(_route, _tier, _endpoint, status, _seconds)] = recorder.requests
    return status


def test_a_request_whose_client_left_before_any_answer_counts_as_499_not_500():
    async def gives_up(scope, receive, send):  # sees the client gone and answers nothing
        assert (await receive())["type"] == "http.disconnect"

    async def fails(scope, receive, send):  # an error after the client left
        await receive()
        raise RuntimeError("boom")

    assert status_of(gives_up) == 499
    assert status_of(fails) == 499


def test_an_answer_that_started_keeps_its_status_and_no_answer_without_a_disconnect_is_500():
    async def answers(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def fails(scope, receive, send):  # never read: the client did not leave as far as we know
        raise RuntimeError("boom")

    assert status_of(answers) == 200
    assert status_of(fails) == 500
