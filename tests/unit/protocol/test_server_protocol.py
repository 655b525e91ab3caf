"""The time limits of :class:`r1edge.protocol.server.BoundedH11Protocol`, driven without a socket
or a clock: a recording event loop holds the timers, and a test fires them by hand. The same
protocol is on every uvicorn command line that serves the router or the edge (``make run``,
functions/router/run.sh, the edge's Dockerfile)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from run import uvicorn_argv
from samlocal import dockerfile_final_stage
from uvicorn.config import Config
from uvicorn.server import ServerState

from r1edge.protocol.server import HTTP_PROTOCOL, BoundedH11Protocol, header_timeout_seconds

ROOT = Path(__file__).resolve().parents[3]


class Timer:
    def __init__(self, delay: float, callback: Any) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """The loop calls the protocol makes: timers are recorded, tasks closed unrun."""

    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, callback: Any) -> Timer:
        self.timers.append(Timer(delay, callback))
        return self.timers[-1]

    def create_task(self, coro: Any) -> Any:
        coro.close()
        return self

    def add_done_callback(self, callback: Any) -> None:
        pass

    def live(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]


class Transport:
    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    pass


def connection(monkeypatch: pytest.MonkeyPatch, header: str = "10") -> tuple[BoundedH11Protocol, Loop, Transport]:
    monkeypatch.setenv("R1EDGE_HEADER_TIMEOUT", header)
    config = Config(app=app, timeout_keep_alive=5, log_level="warning")
    config.load()
    loop = Loop()
    protocol = BoundedH11Protocol(config, ServerState(), {}, _loop=loop)  # type: ignore[arg-type]
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, loop, transport


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_limit(monkeypatch):
    _, loop, transport = connection(monkeypatch)
    [idle] = loop.live()
    assert idle.delay == 5
    idle.callback()
    assert transport.closed


def test_a_head_not_complete_within_the_header_limit_is_closed_without_an_answer(monkeypatch):
    protocol, loop, transport = connection(monkeypatch, header="2.5")
    protocol.data_received(b"GET /ping HTTP/1.1\r\nHo")
    [header] = loop.live()  # the idle timer stopped at the first byte; the head's clock runs
    assert header.delay == 2.5
    protocol.data_received(b"s")  # more bytes do not restart it
    assert loop.live() == [header]
    header.callback()
    assert transport.closed
    assert transport.written == b""


def test_a_complete_head_stops_the_header_clock(monkeypatch):
    protocol, loop, transport = connection(monkeypatch)
    protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert loop.live() == []
    assert not transport.closed


def test_the_rest_of_a_body_already_answered_does_not_restart_the_keep_alive_clock(monkeypatch):
    protocol, loop, transport = connection(monkeypatch)
    protocol.data_received(b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    cycle = protocol.cycle

    async def answer() -> None:  # a 405 sent without reading the body
        await cycle.send({"type": "http.response.start", "status": 405, "headers": [(b"content-length", b"0")]})
        await cycle.send({"type": "http.response.body", "body": b""})

    coro = answer()
    with pytest.raises(StopIteration):
        coro.send(None)
    [after_answer] = loop.live()
    assert after_answer.delay == 5
    protocol.data_received(b"cdef")  # the client goes on sending the body
    assert loop.live() == [after_answer]
    after_answer.callback()
    assert transport.closed


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_header_limit_that_is_not_seconds_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match="R1EDGE_HEADER_TIMEOUT"):
        header_timeout_seconds({"R1EDGE_HEADER_TIMEOUT": value})


def test_the_header_limit_defaults_to_10_s():
    assert header_timeout_seconds({}) == 10.0
    assert header_timeout_seconds({"R1EDGE_HEADER_TIMEOUT": "3"}) == 3.0


def http_flag(words: list[str]) -> str:
    return words[words.index("--http") + 1]


def test_every_uvicorn_command_line_serving_the_router_or_the_edge_uses_the_protocol():
    assert http_flag(uvicorn_argv("router", "127.0.0.1", 8000)) == HTTP_PROTOCOL
    assert http_flag(uvicorn_argv("edge", "127.0.0.1", 8000)) == HTTP_PROTOCOL
    run_sh = shlex.split((ROOT / "functions/router/run.sh").read_text(), comments=True)
    assert http_flag(run_sh) == HTTP_PROTOCOL
    stage = dockerfile_final_stage(ROOT / "functions/edge/Dockerfile")
    assert http_flag(stage["entrypoint"] + stage["cmd"]) == HTTP_PROTOCOL
    # and no explicit --timeout-keep-alive, which would hide UVICORN_TIMEOUT_KEEP_ALIVE
    for words in (uvicorn_argv("router", "127.0.0.1", 8000), run_sh, stage["cmd"]):
        assert "--timeout-keep-alive" not in words
