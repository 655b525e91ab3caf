"""The edge model, production grade, on the real SmolLM2-135M file: confidence, the max_tokens
cap, reasoning output, the bounded queue, corrupt files and cold-start metrics."""

from __future__ import annotations

import asyncio
import json
import math

import llama_cpp
import pytest
from starlette.testclient import TestClient

from r1edge.edge.app import create_app
from r1edge.edge.model import ModelError, resolve_model_path
from r1edge.edge.runtime import GenerationStats, LlamaRuntime
from r1edge.protocol.errors import Overloaded

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Name three colors."}]


def loaded(**options) -> LlamaRuntime:
    rt = LlamaRuntime(resolve_model_path(), n_ctx=2048, **options)
    rt.load()
    return rt


@pytest.fixture(scope="module")
def runtime() -> LlamaRuntime:
    return loaded(max_tokens=8)


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime), raise_server_exceptions=False) as c:
        yield c


def no_eos(rt: LlamaRuntime) -> dict[str, float]:
    return {str(rt._llama.token_eos()): -100}


def sse_events(response) -> list[dict]:
    events = [e.removeprefix("data: ") for e in "".join(response.iter_text()).strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_confidence_is_the_geometric_mean_token_probability_llama_cpp_reports():
    rt = loaded(max_tokens=64)
    stats = GenerationStats()
    body = {"messages": PROMPT, "max_tokens": 12, "temperature": 0, "logit_bias": no_eos(rt)}
    ours = asyncio.run(rt.complete(body, stats=stats))
    # The same generation through llama-cpp-python's own logprobs (which need logits_all=True).
    reference = llama_cpp.Llama(model_path=str(rt.model_path), n_ctx=2048, logits_all=True, verbose=False)
    theirs = reference.create_chat_completion(**body, logprobs=True, top_logprobs=1)
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
    logprobs = [t["logprob"] for t in theirs["choices"][0]["logprobs"]["content"]]
    assert len(logprobs) == stats.scored_tokens == 12
    assert stats.confidence == pytest.approx(math.exp(sum(logprobs) / len(logprobs)), rel=1e-3)
    assert 0 < stats.confidence < 1


def test_json_and_stream_answers_carry_the_confidence_headers(client, runtime):
    response = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 6, "temperature": 0})
    assert response.status_code == 200
    assert 0 < float(response.headers["x-r1edge-confidence"]) <= 1
    usage = response.json()["usage"]
    assert int(response.headers["x-r1edge-confidence-tokens"]) in (
        usage["completion_tokens"],
        usage["completion_tokens"] + 1,
    )
    body = {"messages": PROMPT, "max_tokens": 8, "temperature": 0, "logit_bias": no_eos(runtime), "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as plain:
        assert plain.status_code == 200
        assert "x-r1edge-confidence" not in plain.headers  # a token or two: no figure worth sending
        plain_text = "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_events(plain) if c["choices"])
    headers = {"x-r1edge-confidence-window": "5"}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as held:
        assert held.status_code == 200
        assert int(held.headers["x-r1edge-confidence-tokens"]) >= 5  # held until 5 tokens exist
        events = sse_events(held)
    # nothing held back is lost: the same 8 tokens, the same text
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"]) == plain_text
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("value", ["-1", "abc", "257", "1e3", "٣".encode(), "0" * 5000 + "1"])
def test_a_bad_confidence_window_header_is_400(client, value):
    response = client.post(
        "/v1/chat/completions",
        json={"messages": PROMPT, "stream": True},
        headers={"x-r1edge-confidence-window": value},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_header"


def test_max_tokens_above_the_cap_is_clamped_and_said_in_a_header(client, runtime):
    over = client.post(
        "/v1/chat/completions",
        json={"messages": PROMPT, "max_tokens": 50, "temperature": 0, "logit_bias": no_eos(runtime)},
    )
    assert over.status_code == 200
    assert over.headers["x-r1edge-max-tokens-clamped"] == "8"
    assert over.json()["usage"]["completion_tokens"] == 8
    assert over.json()["choices"][0]["finish_reason"] == "length"
    # No max_tokens: the cap is the limit, and nothing was clamped.
    unset = client.post(
        "/v1/chat/completions", json={"messages": PROMPT, "temperature": 0, "logit_bias": no_eos(runtime)}
    )
    assert "x-r1edge-max-tokens-clamped" not in unset.headers
    assert unset.json()["usage"]["completion_tokens"] == 8
    assert unset.json()["choices"][0]["finish_reason"] == "length"
    # the capped answer is all there (llama-cpp-python's own max_tokens stops it, not a cut)
    assert unset.json()["choices"][0]["message"]["content"] == over.json()["choices"][0]["message"]["content"] != ""
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": PROMPT,
            "max_tokens": 99,
            "stream": True,
            "logit_bias": no_eos(runtime),
            "stream_options": {"include_usage": True},
        },
    ) as streamed:
        assert streamed.headers["x-r1edge-max-tokens-clamped"] == "8"
        assert sse_events(streamed)[-1]["usage"]["completion_tokens"] == 8


def test_reasoning_on_sends_the_real_model_output_to_reasoning_content(client):
    # SmolLM2 never writes </think>, so with reasoning on its whole answer is reasoning — the same
    # text the plain server gives as content, in JSON and in the stream.
    thinking = loaded(max_tokens=8, reasoning="on")
    body = {"messages": PROMPT, "max_tokens": 8, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    with TestClient(create_app(thinking)) as c:
        message = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            events = sse_events(response)
    assert plain["content"].strip()
    assert message == {"role": "assistant", "content": "", "reasoning_content": plain["content"].lstrip()}
    deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert not any(d.get("content") for d in deltas)
    assert deltas[0]["role"] == "assistant"


def test_smollm2_template_does_not_think():
    assert loaded().think_mode.value == "off"


def test_a_full_queue_is_refused_with_503_and_the_waiting_request_still_runs():
    rt = loaded(max_queue=1)
    body = {"messages": PROMPT, "max_tokens": 3, "temperature": 0}

    async def scenario():
        holder = rt.stream({**body, "max_tokens": 1500, "logit_bias": no_eos(rt)})
        await anext(holder)  # generating: the model is taken
        waiting = asyncio.create_task(rt.complete(body))  # the one queue place
        for _ in range(100):  # yield until the task has taken it
            if rt._waiting:
                break
            await asyncio.sleep(0)
        assert rt._waiting == 1
        with pytest.raises(Overloaded) as refused:
            await rt.complete(body)
        await holder.aclose()
        return refused.value, await waiting

    refused, answer = asyncio.run(scenario())
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert answer["usage"]["completion_tokens"] == 3


def test_a_full_queue_is_503_over_http():
    rt = loaded(max_queue=0)
    with TestClient(create_app(rt)) as c:
        body = {"messages": PROMPT, "max_tokens": 1500, "logit_bias": no_eos(rt), "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as busy:
            assert busy.status_code == 200
            refused = c.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert c.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("size", [4096, 40_000_000])
def test_a_truncated_model_file_is_a_clear_error_not_a_crash(tmp_path, size):
    truncated = tmp_path / "truncated.gguf"
    with open(resolve_model_path(), "rb") as source:
        truncated.write_bytes(source.read(size))
    with pytest.raises(ModelError, match="corrupt or truncated") as info:
        LlamaRuntime(truncated).load()
    assert str(truncated) in str(info.value)


def test_cold_start_times_are_logged_and_emitted_as_emf_metrics(capsys):
    rt = LlamaRuntime(resolve_model_path(), n_ctx=512)
    with TestClient(create_app(rt)) as c:
        assert c.get("/health").status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emf = next(line for line in lines if "ModelLoadTime" in line)
    names = {m["Name"]: m["Unit"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names == {"ModelImportTime": "Milliseconds", "ModelLoadTime": "Milliseconds"}
    assert emf["ModelLoadTime"] == [pytest.approx(rt.load_seconds * 1000)]
    assert emf["model"] == "SmolLM2-135M-Instruct.Q4_1"


def test_a_stream_client_that_leaves_while_queued_frees_its_place():
    import threading
    import time

    import httpx
    import uvicorn
    from run import free_port

    rt = loaded(max_queue=1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        endless = {"messages": PROMPT, "max_tokens": 1500, "logit_bias": no_eos(rt), "stream": True}
        with httpx.stream("POST", base, json=endless, timeout=30) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # the model is taken
            with pytest.raises(httpx.ReadTimeout):  # queued behind it, then gives up
                httpx.post(base, json={"messages": PROMPT, "max_tokens": 2, "stream": True}, timeout=0.5)
            deadline = time.monotonic() + 5
            while rt._waiting and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rt._waiting == 0  # its place in the queue is free again
        assert httpx.post(base, json={"messages": PROMPT, "max_tokens": 2}, timeout=30).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
