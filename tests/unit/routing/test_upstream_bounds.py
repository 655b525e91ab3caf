"""Bounded reads from upstreams: a JSON answer over the endpoint's ``max_response_bytes`` and an
SSE line (or event) over its ``max_sse_line_bytes`` are failed attempts, and no more of them is
read than the limit and the read that passed it. Error bodies are read up to 64 KiB."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fakes import FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.protocol.errors import ConfigError
from r1edge.routing.config import parse_config

MSG = [{"role": "user", "content": "hi"}]
KiB = 1024
MiB = 1024 * KiB
READ = 64 * KiB


class Lazy(httpx.AsyncByteStream):
    """A body made as it is read: ``head``, then ``count`` reads of ``piece`` (``None``: no end).
    ``reads`` counts the reads taken."""

    def __init__(self, piece: bytes, count: int | None, head: bytes = b"", tail: bytes = b"") -> None:
        self.piece, self.count, self.head, self.tail = piece, count, head, tail
        self.reads = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.reads += 1
            yield self.head
        n = 0
        while self.count is None or n < self.count:
            n += 1
            self.reads += 1
            yield self.piece
        if self.tail:
            yield self.tail


def lazy_reply(stream: Lazy, status: int = 200, content_type: str = "application/json", **headers: str):
    return httpx.Response(status, headers={"content-type": content_type, **headers}, stream=stream)


def router(fake: FakeUpstream, *, limits: dict[str, Any] | None = None, **extra: Any) -> TestClient:
    limits = limits or {}
    cfg = config(
        endpoint("r1-a", "cluster", **limits),
        endpoint("r1-b", "cluster", priority=1, **limits),
        retry={"max_attempts": 1},
        **extra,
    )
    return TestClient(create_app(cfg, fake.upstream(), **FakeClock().options()), raise_server_exceptions=False)


def ask(client: TestClient) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG})


def stream(client: TestClient) -> tuple[int, str]:
    body = {"model": "deepseek-r1", "messages": MSG, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        return response.status_code, "".join(response.iter_text())


# --- the config -------------------------------------------------------------------------------


def test_the_limits_are_per_endpoint_with_8_mib_and_1_mib_defaults():
    cfg = parse_config({"endpoints": [endpoint("r1-a", "cluster", max_response_bytes=2 * MiB)]}, environ={})
    assert (cfg.endpoints[0].max_response_bytes, cfg.endpoints[0].max_sse_line_bytes) == (2 * MiB, MiB)
    cfg = parse_config({"endpoints": [endpoint("r1-a", "cluster")]}, environ={})
    assert (cfg.endpoints[0].max_response_bytes, cfg.endpoints[0].max_sse_line_bytes) == (8 * MiB, MiB)
    for field in ("max_response_bytes", "max_sse_line_bytes"):
        with pytest.raises(ConfigError, match=f"endpoints\\[0\\].{field}"):
            parse_config({"endpoints": [endpoint("r1-a", "cluster", **{field: 1023})]}, environ={})


# --- JSON answers -----------------------------------------------------------------------------


def test_a_content_length_over_the_limit_is_refused_before_any_byte_is_read():
    huge = Lazy(b"x" * READ, 2048)  # 128 MiB, if anyone read it
    fake = FakeUpstream({"r1-a": [lazy_reply(huge, **{"content-length": str(128 * MiB)})]})
    fake.script["r1-b"] = [json_reply(completion("from b"))]
    with router(fake) as client:
        response = ask(client)
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-b"
    assert huge.reads == 0


def test_a_chunked_json_answer_stops_being_read_once_past_the_limit_then_falls_back():
    huge = Lazy(b"x" * READ, 2048, head=b'{"choices": ["')  # 128 MiB, no Content-Length
    fake = FakeUpstream({"r1-a": [lazy_reply(huge)], "r1-b": [json_reply(completion("from b"))]})
    with router(fake, limits={"max_response_bytes": MiB}) as client:
        response = ask(client)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from b"
    assert huge.reads == 1 + MiB // READ  # the head, then 16 reads: the 16th passes 1 MiB (with the head)


def test_oversized_json_answers_from_every_endpoint_are_a_502_naming_the_limit():
    fake = FakeUpstream(
        {
            "r1-a": [lazy_reply(Lazy(b"x" * READ, None, head=b'{"choices": ["'))],
            "r1-b": [lazy_reply(Lazy(b"x" * READ, 1), **{"content-length": str(9 * MiB)})],
        }
    )
    with router(fake) as client:
        response = ask(client)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "r1-a: unusable body: ResponseTooLarge: upstream body is larger than 8388608 bytes" in error["message"]
    assert "r1-b: unusable body: ResponseTooLarge: upstream body of Content-Length 9437184" in error["message"]
    assert "max_response_bytes" in error["message"]


def test_an_answer_at_the_limit_is_read_whole():
    answer = json.dumps(completion("y" * 3000)).encode()
    fake = FakeUpstream({"r1-a": [lazy_reply(Lazy(answer, 1))]})
    with router(fake, limits={"max_response_bytes": len(answer)}) as client:
        response = ask(client)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "y" * 3000


def test_an_error_body_is_read_up_to_64_kib_only():
    endless_error = Lazy(b"e" * READ, None)
    fake = FakeUpstream({"r1-a": [lazy_reply(endless_error, status=500)], "r1-b": [json_reply(completion("b"))]})
    with router(fake) as client:
        response = ask(client)
    assert response.status_code == 200
    assert endless_error.reads == 2  # 64 KiB, and the read that passed it


# --- SSE --------------------------------------------------------------------------------------


def sse_lazy(stream: Lazy) -> httpx.Response:
    return lazy_reply(stream, content_type="text/event-stream")


def test_a_newline_less_sse_line_before_content_falls_back_then_502():
    a = Lazy(b"z" * READ, None, head=b"data: ")  # one line that never ends
    b = Lazy(b"z" * READ, None, head=sse(chunk(None), done=False) + b": ")  # a role chunk, an endless comment
    fake = FakeUpstream({"r1-a": [sse_lazy(a)], "r1-b": [sse_lazy(b)]})
    with router(fake, limits={"max_sse_line_bytes": MiB}) as client:
        status, text = stream(client)
    assert status == 502
    error = json.loads(text)["error"]
    assert error["code"] == "upstream_error"
    assert error["message"].count("upstream sent an SSE line longer than 1048576 bytes") == 2
    assert "max_sse_line_bytes" in error["message"]
    assert a.reads == 1 + MiB // READ  # the head, and reads until the line passed 1 MiB
    assert b.reads == 1 + MiB // READ


def test_a_newline_less_sse_line_after_content_truncates_the_stream():
    head = sse(chunk("hello "), done=False) + b"data: "
    endless = Lazy(b"z" * READ, None, head=head)
    fake = FakeUpstream({"r1-a": [sse_lazy(endless)]})
    with router(fake) as client:
        status, text = stream(client)
    assert status == 200
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hello "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert error["message"] == "upstream sent an SSE line longer than 1048576 bytes (the limit, max_sse_line_bytes)"
    assert "[DONE]" not in text
    assert endless.reads == 1 + MiB // READ


def test_an_event_of_endless_data_lines_truncates_the_stream():
    head = sse(chunk("hello "), done=False)
    endless = Lazy(b"data: " + b"d" * (READ - 7) + b"\n", None, head=head)  # no blank line, ever
    fake = FakeUpstream({"r1-a": [sse_lazy(endless)]})
    with router(fake, limits={"max_sse_line_bytes": MiB}) as client:
        status, text = stream(client)
    assert status == 200
    error = json.loads(text.split("\n\n")[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert error["message"] == (
        "upstream sent the data of one SSE event longer than 1048576 bytes (the limit, max_sse_line_bytes)"
    )
    assert endless.reads <= 1 + MiB // (READ - 7) + 1


def test_more_than_1024_chunks_without_content_is_a_failed_attempt():
    empty = sse(*[chunk(None)] * 1100, chunk("late"), chunk(finish_reason="stop"))
    fake = FakeUpstream(
        {
            "r1-a": [httpx.Response(200, headers={"content-type": "text/event-stream"}, content=empty)],
            "r1-b": [httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(chunk("b")))],
        }
    )
    with (
        router(fake) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG, "stream": True}
        ) as response,
    ):
        text = response.read().decode()
    assert response.headers["x-r1edge-upstream"] == "r1-b"
    assert '"content":"b"' in text
