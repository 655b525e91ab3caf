"""``POST /v1/responses`` with the official ``openai`` SDK against the real edge model: the edge
server (SmolLM2-135M GGUF through llama-cpp-python) on a free port, the router in-process in
front of it. Plain, streamed, and ``max_output_tokens`` → incomplete."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import uvicorn
from run import free_port  # infra/local/run.py, on pytest's pythonpath
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.edge.app import create_app as create_edge_app
from r1edge.edge.model import resolve_model_path
from r1edge.edge.runtime import LlamaRuntime
from r1edge.routing.config import parse_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client():
    runtime = LlamaRuntime(resolve_model_path(), n_ctx=2048)
    runtime.load()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_edge_app(runtime), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    cfg = parse_config(
        {"endpoints": [{"name": "edge-local", "url": f"http://127.0.0.1:{port}/v1", "tier": "edge"}]}, environ={}
    )
    try:
        with TestClient(create_app(cfg), raise_server_exceptions=False) as http:
            yield openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_plain_answer_from_the_edge_model(client):
    raw = client.responses.with_raw_response.create(
        model="edge", input="Name three colors.", max_output_tokens=40, temperature=0
    )
    response = raw.parse()
    assert raw.headers["x-r1edge-route"] == "edge"
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 40


def test_streamed_answer_from_the_edge_model(client):
    events = list(
        client.responses.create(model="edge", input="Say hello.", max_output_tokens=30, temperature=0, stream=True)
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas
    assert events[-1].response.output_text == deltas
    assert events[-1].response.usage.output_tokens > 0


def test_max_output_tokens_gives_an_incomplete_response(client):
    response = client.responses.create(
        model="edge", input="Write a long story about a dragon.", max_output_tokens=3, temperature=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
