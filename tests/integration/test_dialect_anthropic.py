"""The Anthropic Messages API against the real edge model (SmolLM2-135M GGUF behind a uvicorn
edge server on a free port), through the router in-process, with the official ``anthropic`` SDK:
a plain message, a streamed one, and count_tokens. Under 60 s."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx2
import pytest
import uvicorn
from fakes import config
from run import free_port
from starlette.testclient import TestClient

from r1edge.apps.router import create_app as router_app
from r1edge.edge.app import create_app as edge_app
from r1edge.edge.model import resolve_model_path
from r1edge.edge.runtime import LlamaRuntime

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def edge_url():
    runtime = LlamaRuntime(resolve_model_path(), n_ctx=2048)
    runtime.load()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(edge_app(runtime), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(edge_url):
    cfg = config({"name": "edge-a", "url": edge_url, "tier": "edge"}, aliases={"claude-haiku-4-5": "edge"})
    with TestClient(router_app(cfg), raise_server_exceptions=False) as router:

        def handler(request: httpx2.Request) -> httpx2.Response:
            reply = router.request(
                request.method, str(request.url), headers=list(request.headers.multi_items()), content=request.read()
            )
            return httpx2.Response(reply.status_code, headers=list(reply.headers.multi_items()), content=reply.content)

        http = httpx2.Client(transport=httpx2.MockTransport(handler), base_url="http://testserver")
        yield anthropic.Anthropic(base_url="http://testserver", api_key="x", http_client=http, max_retries=0)


def test_message_from_the_edge_model(client):
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=HI)
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 16


def test_streamed_message_from_the_edge_model(client):
    with client.messages.stream(model="edge", max_tokens=8, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens <= 8


def test_count_tokens(client):
    assert client.messages.count_tokens(model="edge", messages=HI).input_tokens > 0
