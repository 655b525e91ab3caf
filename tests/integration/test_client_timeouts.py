"""Bounded time from clients: the router as ``make run-router`` serves it (uvicorn started with
``infra/local/run.py``'s :func:`uvicorn_argv`) closes connections whose request head dribbles in
slower than the header limit, answers 408 to a body that stalls, and closes idle connections —
also ones that never sent a request, and ones still sending the body of a request already
answered. Real sockets on 127.0.0.1; short limits (1 s) through the environment; every wait is
on the socket (its EOF or its answer) with a bound, and the server is stopped at the end."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from run import Stack, child_env, free_port, uvicorn_argv, wait_ready

pytestmark = pytest.mark.integration

#: Seconds, given to the server through the environment.
LIMIT = 1
#: Longest a test waits for the server to act (seconds): far above the limits, so a pass never
#: depends on speed; on the old setup (no limits) every wait below runs into it.
BOUND = 10.0


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("client-timeouts")
    config = tmp / "routing.json"
    # /ping and the paths tested here never call an endpoint: nothing needs to listen on it
    config.write_text(json.dumps({"endpoints": [{"name": "r1", "url": "http://127.0.0.1:9/v1", "tier": "cluster"}]}))
    port = free_port()
    environ = child_env(
        R1EDGE_CONFIG=str(config),
        R1EDGE_CACHE_DIR=str(tmp / "cache"),
        R1EDGE_HEADER_TIMEOUT=str(LIMIT),
        R1EDGE_BODY_TIMEOUT=str(LIMIT),
        UVICORN_TIMEOUT_KEEP_ALIVE=str(LIMIT),
    )
    for name in ("R1EDGE_KEYS_TABLE", "R1EDGE_HEALTH_TABLE", "JOBS_QUEUE_URL", "R1EDGE_CACHE_L2"):
        environ.pop(name, None)
    stack = Stack()
    try:
        stack.start("router", uvicorn_argv("router", "127.0.0.1", port), environ)
        wait_ready(stack, "router", f"http://127.0.0.1:{port}/ping", timeout=60)
        yield ("127.0.0.1", port)
    finally:
        stack.stop()


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=BOUND)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection (EOF or reset) or ``seconds`` pass; return
    whether it closed and what it sent."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return True, received
        if not data:
            return True, received
        received += data
    return False, received


def test_a_request_head_sent_one_byte_at_a_time_is_cut_off_after_the_header_limit(router):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"a" * 200
    with connect(router) as sock:
        # one byte every 0.25 s: never idle for the keep-alive limit, yet never a complete head
        for i, byte in enumerate(head):
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            closed, received = closed_within(sock, 0.25)
            if closed:
                break
            assert i * 0.25 < BOUND, "the server still reads a head that has dribbled in for the whole bound"
        else:
            pytest.fail("the whole head went through")
    assert closed
    assert received == b""  # no answer: the request never started (as Go's ReadHeaderTimeout, nginx)


def test_a_body_that_stalls_is_answered_408_and_the_connection_closed(router):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(router) as sock:
        sock.sendall(head + body[:10])  # then nothing more
        closed, received = closed_within(sock, BOUND)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    headers, _, payload = received.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in headers.lower()
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert closed


def test_200_silent_connections_are_all_closed_after_the_idle_limit(router):
    socks = [connect(router) for _ in range(200)]
    try:
        open_ = set(socks)
        deadline = time.monotonic() + BOUND
        while open_ and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(open_), [], [], left)
            for sock in readable:
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:
                    data = b""
                assert data == b"", data[:200]  # closed without an answer
                open_.discard(sock)
        assert not open_, f"{len(open_)} of 200 silent connections still open after {BOUND} s"
    finally:
        for sock in socks:
            sock.close()


def test_the_rest_of_a_body_already_answered_does_not_keep_the_connection_open(router):
    # GET-only path: answered 405 at once, without reading the body the client goes on sending
    head = b"POST /v1/models HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
    with connect(router) as sock:
        sock.sendall(head)
        received = b""
        closed = False
        deadline = time.monotonic() + BOUND
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"x")  # one byte every 0.25 s: more often than the idle limit
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, more = closed_within(sock, 0.25)
            received += more
    assert received.startswith(b"HTTP/1.1 405 "), received[:200]
    assert closed


def test_requests_on_a_kept_alive_connection_still_work(router):
    host, port = router
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=BOUND) as client:
        first = client.get("/ping")
        second = client.get("/v1/models")
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["data"]
