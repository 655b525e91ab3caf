"""The SSE relay, through the router: order kept, ``[DONE]`` last, reasoning and usage kept,
multi-byte characters split across network reads arrive whole, comment lines never reach the JSON
parser, and a stream cut after content ends with an error event and no ``[DONE]``."""

from __future__ import annotations

import json

import httpx
import pytest
from fakes import FakeClock, FakeUpstream, chunk, config, endpoint, sse, sse_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.protocol.sse import normalize_completion, parse_completion

STOP = chunk(finish_reason="stop")


def relay(chunks: list[bytes], error: Exception | None = None) -> list[str]:
    """Stream ``chunks`` (these exact network reads) from an upstream through the router; return
    the client's ``data:`` payloads."""
    fake = FakeUpstream({"r1-a": [lambda request: sse_reply(chunks, error)]})
    app = create_app(
        config(endpoint("r1-a", "cluster"), retry={"max_attempts": 1}), fake.upstream(), **FakeClock().options()
    )
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with TestClient(app) as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = "".join(response.iter_text())
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text[:-2].split("\n\n") if not event.startswith(":")]


def contents(events: list[str]) -> list[str]:
    out = []
    for e in events:
        if e != "[DONE]" and "choices" in json.loads(e):
            for c in json.loads(e)["choices"]:
                if c["delta"].get("content"):
                    out.append(c["delta"]["content"])
    return out


def test_order_kept_and_done_last():
    body = sse(*(chunk(str(i)) for i in range(50)), STOP)
    events = relay([body])
    assert events[-1] == "[DONE]"
    assert contents(events) == [str(i) for i in range(50)]


def test_reasoning_content_and_usage_chunks_pass_through():
    usage = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    events = relay([sse(chunk(reasoning_content="think"), chunk("answer"), STOP, usage)])
    objs = [json.loads(e) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"] == {"reasoning_content": "think"}
    assert objs[1]["choices"][0]["delta"] == {"content": "answer"}
    assert objs[3]["usage"] == usage["usage"]
    assert objs[3]["choices"] == []


def test_vllm_reasoning_is_renamed_and_never_doubled():
    events = relay([sse(chunk(reasoning="a"), chunk(reasoning="b", reasoning_content="b"), STOP)])
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-2]]
    assert deltas == [{"reasoning_content": "a"}, {"reasoning_content": "b"}]


def test_multibyte_character_split_across_reads_arrives_whole():
    body = sse(chunk("héllo 世界 🙂"), STOP)
    cut = body.index("世".encode()) + 1  # inside the 3-byte sequence
    emoji = body.index("🙂".encode()) + 2  # inside the 4-byte sequence
    events = relay([body[:cut], body[cut:emoji], body[emoji:]])
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "héllo 世界 🙂"


def test_event_split_in_the_middle_of_a_line_and_crlf_endings():
    body = sse(chunk("one"), chunk("two"), STOP).replace(b"\n", b"\r\n")
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    events = relay(pieces)
    assert contents(events) == ["one", "two"]
    assert events[-1] == "[DONE]"


def test_keep_alive_comments_never_reach_the_json_parser():
    body = b": keep-alive\n\n" + b": ping - 2025-01-01\n\n" + sse(chunk("x"), STOP, done=False) + b": keep-alive\n\n"
    events = relay([body, b"data: [DONE]\n\n"])
    assert len(events) == 3
    assert contents(events) == ["x"]
    assert events[-1] == "[DONE]"


def test_stream_cut_before_done_ends_with_error_event_and_no_done():
    events = relay(
        [sse(*(chunk(str(i)) for i in range(40)), done=False)],
        error=httpx.RemoteProtocolError("peer closed connection"),
    )
    assert len(events) == 41
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert error["type"] == "server_error"
    assert "[DONE]" not in events


def test_stream_that_just_ends_without_done_is_truncated():
    events = relay([sse(chunk("a"), done=False)])
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_truncated"


def test_error_object_mid_stream_ends_stream_as_truncated():
    events = relay([sse(chunk("a"), {"error": {"message": "engine died"}})])
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "a"
    error = json.loads(events[1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert "engine died" in error["message"]
    assert len(events) == 2


def test_non_json_event_is_truncation_not_a_crash():
    events = relay([sse(chunk("a"), done=False) + b"data: {not json\n\n"])
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_truncated"


def test_parse_completion_normalises_and_refuses_non_completions():
    obj = parse_completion(json.dumps({"choices": [{"message": {"reasoning": "r", "content": "c"}}]}).encode())
    assert obj["choices"][0]["message"] == {"reasoning_content": "r", "content": "c"}
    for bad in (b'{"choices": [', b"[]", b'{"id": 1}'):
        with pytest.raises(ValueError):  # noqa: PT011 - JSONDecodeError or our own ValueError
            parse_completion(bad)


def test_normalize_keeps_reasoning_content_when_both_present():
    obj = {"choices": [{"message": {"reasoning": "vllm", "reasoning_content": "deepseek"}}]}
    assert normalize_completion(obj)["choices"][0]["message"] == {"reasoning_content": "deepseek"}


def test_the_body_is_read_to_its_end_after_done_so_the_connection_can_be_reused():
    import asyncio

    import httpx
    from fakes import ChunkStream, chunk, sse

    from r1edge.protocol.sse import iter_chunks

    class Recording(ChunkStream):
        finished = False

        async def __aiter__(self):
            async for part in super().__aiter__():
                yield part
            self.finished = True

    body = Recording([sse(chunk("a"), chunk(finish_reason="stop")), b": trailing comment\n\n"])
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    async def read():
        return [c async for c in iter_chunks(response)]

    chunks = asyncio.run(read())
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", None]
    assert body.finished  # everything after [DONE] was read: httpx may keep the connection
