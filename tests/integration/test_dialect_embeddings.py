"""Embeddings from the real SmolLM2-135M GGUF file: the edge server on a free port, asked by the
official OpenAI SDK directly and through the router (``POST /v1/embeddings`` forwarded to the edge
tier)."""

from __future__ import annotations

import base64
import struct
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from fakes import config, endpoint
from run import free_port  # infra/local/run.py, on pytest's pythonpath
from starlette.testclient import TestClient

from r1edge.apps.router import create_app as create_router
from r1edge.edge.app import create_app as create_edge
from r1edge.edge.model import resolve_model_path
from r1edge.edge.runtime import LlamaRuntime

pytestmark = pytest.mark.integration

TEXTS = ["The sky is blue.", "Rust is a systems programming language."]


@pytest.fixture(scope="module")
def edge():
    rt = LlamaRuntime(resolve_model_path(), n_ctx=2048)
    rt.load()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_edge(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield rt, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_edge_embeds_two_strings_as_floats_and_as_base64(edge):
    rt, base_url = edge
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="edge", input=TEXTS, encoding_format="float")
    size = rt._llama.n_embd()  # Llama.n_embd(): 576 for SmolLM2-135M
    assert [d.index for d in answer.data] == [0, 1]
    assert [len(d.embedding) for d in answer.data] == [size, size]
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    assert answer.model == rt.model_id

    raw = httpx.post(f"{base_url}/embeddings", json={"input": TEXTS, "encoding_format": "base64"}, timeout=30).json()
    for item, floats in zip(raw["data"], answer.data, strict=True):
        decoded = struct.unpack(f"<{size}f", base64.b64decode(item["embedding"]))
        assert decoded == pytest.approx(floats.embedding, rel=1e-6, abs=1e-6)

    wrong = httpx.post(f"{base_url}/embeddings", json={"input": "x", "dimensions": size - 1}, timeout=30)
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "dimensions"


def test_the_router_forwards_embeddings_to_the_real_edge(edge):
    rt, base_url = edge
    cfg = config(endpoint("edge-a", "edge", url=base_url))
    with TestClient(create_router(cfg)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
        answer = client.embeddings.with_raw_response.create(model="edge", input=TEXTS[0])  # SDK default: base64
        assert answer.headers["x-r1edge-route"] == "edge"
        assert answer.headers["x-r1edge-upstream"] == "edge-a"
        assert len(answer.parse().data[0].embedding) == rt._llama.n_embd()
