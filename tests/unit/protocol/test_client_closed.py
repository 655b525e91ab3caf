"""A client that leaves during its upload: counted as a client close (status 499, nginx's
"client closed request"), logged once without a traceback, never a 500 — and a body that stalls
is answered 408 in the OpenAI shape. Driven through the router app with a hand-written ASGI
``receive`` (no socket)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.applications import Starlette

from r1edge.apps.router import create_app
from r1edge.observe.metrics import Recorder
from r1edge.protocol import web

BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hello " * 50}]}).encode()
ROUTE = "/v1/chat/completions"


def scope(body_length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": ROUTE,
        "raw_path": ROUTE.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(body_length).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def serve(app: Starlette, messages: list[dict[str, Any]], then_block: bool = False) -> list[dict[str, Any]]:
    """Run one request through ``app`` (its lifespan around it): ``receive`` yields ``messages``
    in order, then blocks forever (``then_block``) or keeps answering ``http.disconnect``."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if then_block:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app(scope(len(BODY)), receive, send)
    return sent


@pytest.fixture
def app() -> Starlette:
    fake = FakeUpstream({"edge-a": [json_reply(completion())], "r1-a": [json_reply(completion())]})
    return create_app(config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster")), fake.upstream())


@pytest.fixture
def log_lines(caplog) -> Iterator[Any]:
    """Every line r1edge's Powertools loggers write (their JSON lines) plus every other logger's
    records at INFO and up (uvicorn, asyncio, starlette) through caplog."""
    caplog.set_level(logging.INFO)
    buffer = io.StringIO()
    swapped = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("r1edge") and isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler):
                    swapped.append((handler, handler.stream))
                    handler.stream = buffer

    def read() -> list[str]:
        ours = [line for line in buffer.getvalue().splitlines() if line.strip()]
        others = [r.getMessage() for r in caplog.records if not r.name.startswith("r1edge")]
        return ours + others

    yield read
    for handler, stream in swapped:
        handler.stream = stream


def requests_samples(recorder: Recorder) -> dict[str, float]:
    """``r1edge_requests_total`` by status."""
    out: dict[str, float] = {}
    for metric in recorder.registry.collect():
        for sample in metric.samples:
            if sample.name == "r1edge_requests_total":
                out[sample.labels["status"]] = out.get(sample.labels["status"], 0) + sample.value
    return out


def test_a_client_that_disconnects_during_its_upload_is_a_499_logged_once_without_traceback(app, log_lines):
    half = len(BODY) // 2
    sent = asyncio.run(
        serve(app, [{"type": "http.request", "body": BODY[:half], "more_body": True}, {"type": "http.disconnect"}])
    )

    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [web.CLIENT_CLOSED_REQUEST]
    assert requests_samples(app.state.metrics) == {"499": 1.0}
    lines = log_lines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["message"] == "client closed the request"
    assert record["path"] == ROUTE
    assert record["status"] == 499
    assert record["received_bytes"] == half
    assert "Traceback" not in lines[0]
    assert "exception" not in record


@pytest.mark.timeout(20)  # without a body limit the read would wait forever
def test_a_body_that_stalls_is_answered_408_in_the_openai_shape_and_the_connection_closed(app, monkeypatch):
    # 0 s: the first read that has to wait times out, with no real wait in the test
    monkeypatch.setenv("R1EDGE_BODY_TIMEOUT", "0")
    sent = asyncio.run(serve(app, [{"type": "http.request", "body": BODY[:10], "more_body": True}], then_block=True))

    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["connection"] == "close"  # RFC 9110 section 15.5.9
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["error"]["code"] == "request_timeout"
    assert body["error"]["type"] == "invalid_request_error"
    assert requests_samples(app.state.metrics) == {"408": 1.0}
