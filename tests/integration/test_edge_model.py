"""The edge server over the real SmolLM2-135M GGUF file (no fake model)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field

import anyio
import pytest
from starlette.testclient import TestClient

from r1edge.edge.app import create_app
from r1edge.edge.model import resolve_model_path
from r1edge.edge.runtime import GenerationStats, LlamaRuntime

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def runtime() -> LlamaRuntime:
    rt = LlamaRuntime(resolve_model_path(), n_ctx=2048)
    rt.load()
    return rt


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime), raise_server_exceptions=False) as c:
        yield c


def complete(client, **body):
    body.setdefault("messages", PROMPT)
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream(client, **body) -> list[dict]:
    body.setdefault("messages", PROMPT)
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [e.removeprefix("data: ") for e in text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_template_comes_from_the_model_metadata(runtime):
    assert "tokenizer.chat_template" in runtime._llama.metadata
    assert runtime._llama.chat_format == "chat_template.default"
    assert runtime.load_seconds is not None


def test_json_completion_has_exact_usage_and_honours_max_tokens(client):
    body = complete(client, max_tokens=5, temperature=0)
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if usage["completion_tokens"] == 5:
        assert choice["finish_reason"] == "length"


def test_max_completion_tokens_is_honoured(client):
    body = complete(client, max_completion_tokens=3, temperature=0)
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_stream_usage_equals_the_json_usage_for_the_same_generation(client):
    for max_tokens in (4, 60):
        plain = complete(client, max_tokens=max_tokens, temperature=0, seed=1)
        chunks = stream(client, max_tokens=max_tokens, temperature=0, seed=1, stream_options={"include_usage": True})
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == plain["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == plain["usage"]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finish == [plain["choices"][0]["finish_reason"]]


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = stream(client, max_tokens=3, temperature=0)
    assert all(c["choices"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"


def test_stop_sequence_is_honoured(client):
    plain = complete(client, max_tokens=40, temperature=0)["choices"][0]["message"]["content"]
    word = plain.split()[1]
    stopped = complete(client, max_tokens=40, temperature=0, stop=[word])
    assert word not in stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_same_seed_same_answer_at_high_temperature(client):
    a = complete(client, max_tokens=20, temperature=1.5, seed=42)["choices"][0]["message"]["content"]
    b = complete(client, max_tokens=20, temperature=1.5, seed=42)["choices"][0]["message"]["content"]
    assert a == b


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(client):
    messages = [{"role": "user", "content": "apple " * 3000}]
    for body in ({"messages": messages}, {"messages": messages, "stream": True}):
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "2048" in error["message"]


def test_concurrent_requests_are_serialized_and_each_answer_is_whole(client):
    expected = complete(client, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    results: list[str] = []

    def worker():
        results.append(complete(client, max_tokens=12, temperature=0)["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_models_and_health(client, runtime):
    assert client.get("/v1/models").json()["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["n_ctx"] == 2048


def endless(runtime: LlamaRuntime) -> dict:
    """A 1500-token request with end-of-generation banned: only a cancel (or the cap) stops it."""
    return {
        "messages": [{"role": "user", "content": "Count from one to one thousand."}],
        "max_tokens": 1500,
        "temperature": 0,
        "logit_bias": {str(runtime._llama.token_eos()): -100},
    }


@dataclass
class Watched(GenerationStats):
    """Generation stats that set :attr:`generating` once the worker thread has counted the first
    completion token (the runtime fills them in as tokens are sampled)."""

    generating: threading.Event = field(default_factory=threading.Event)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "completion_tokens" and value:
            self.generating.set()


def test_cancel_stops_a_non_streamed_generation_at_the_next_token(runtime):
    kwargs = endless(runtime)
    stats = Watched()
    cancel = stats.generating  # set mid-generation, by the worker thread, after the first token
    result = anyio.run(runtime.complete, kwargs, cancel, stats)
    assert result["usage"]["completion_tokens"] < 1500
    # the context is free again: the next request runs at once and whole
    again = anyio.run(runtime.complete, {**kwargs, "max_tokens": 3})
    assert again["usage"]["completion_tokens"] == 3


def test_prompt_plus_max_tokens_over_the_context_is_400_not_a_shortened_answer(client):
    messages = [{"role": "user", "content": "apple " * 1900}]  # ~1900 tokens: fits 2048 alone
    for body in ({"messages": messages, "max_tokens": 400}, {"messages": messages, "max_tokens": 400, "stream": True}):
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert "400 for the completion" in response.json()["error"]["message"]


def test_a_cancelled_caller_never_overlaps_the_next_generation(runtime):
    long = endless(runtime)

    async def scenario():
        cancel = threading.Event()
        stats = Watched()
        task = asyncio.create_task(runtime.complete(long, cancel, stats))
        assert await asyncio.to_thread(stats.generating.wait, 60)  # its thread is inside llama.cpp
        cancel.set()
        task.cancel()  # the coroutine is gone while its thread may still be inside llama.cpp
        with contextlib.suppress(asyncio.CancelledError):
            await task
        after = await runtime.complete({**long, "max_tokens": 4})
        chunks = [c async for c in runtime.stream({**long, "max_tokens": 4})]
        return after, chunks

    after, chunks = asyncio.run(scenario())
    assert after["usage"]["completion_tokens"] == 4
    assert chunks[-1]["usage"]["completion_tokens"] == 4
