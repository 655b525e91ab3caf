"""The SSE relay: order kept, ``[DONE]`` last, reasoning and usage kept, multi-byte characters
split across network reads arrive whole, comment lines never reach the JSON parser, and a cut
stream ends with an error event and no ``[DONE]``."""

from __future__ import annotations

import json

import httpx
import pytest
from fakes import ChunkStream, chunk, sse

from r1edge.relay import normalize_completion, parse_completion, relay_sse

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def relay(chunks: list[bytes], error: Exception | None = None) -> list[str]:
    stream = ChunkStream(chunks, error)
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
    out = b"".join([piece async for piece in relay_sse(response)])
    text = out.decode("utf-8")
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text[:-2].split("\n\n")]


async def test_order_kept_and_done_last():
    body = sse(*(chunk(str(i)) for i in range(50)))
    events = await relay([body])
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == [str(i) for i in range(50)]


async def test_reasoning_content_and_usage_chunks_pass_through():
    usage = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    events = await relay([sse(chunk(reasoning_content="think"), chunk("answer"), usage)])
    objs = [json.loads(e) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"] == {"reasoning_content": "think"}
    assert objs[1]["choices"][0]["delta"] == {"content": "answer"}
    assert objs[2]["usage"] == usage["usage"]
    assert objs[2]["choices"] == []


async def test_vllm_reasoning_is_renamed_and_never_doubled():
    events = await relay([sse(chunk(reasoning="a"), chunk(reasoning="b", reasoning_content="b"))])
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas == [{"reasoning_content": "a"}, {"reasoning_content": "b"}]


async def test_multibyte_character_split_across_reads_arrives_whole():
    body = sse(chunk("héllo 世界 🙂"))
    cut = body.index("世".encode()) + 1  # inside the 3-byte sequence
    emoji = body.index("🙂".encode()) + 2  # inside the 4-byte sequence
    events = await relay([body[:cut], body[cut:emoji], body[emoji:]])
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "héllo 世界 🙂"


async def test_event_split_in_the_middle_of_a_line_and_crlf_endings():
    body = sse(chunk("one"), chunk("two")).replace(b"\n", b"\r\n")
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    events = await relay(pieces)
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["one", "two"]
    assert events[-1] == "[DONE]"


async def test_keep_alive_comments_never_reach_the_json_parser():
    body = b": keep-alive\n\n" + b": ping - 2025-01-01\n\n" + sse(chunk("x"), done=False) + b": keep-alive\n\n"
    events = await relay([body, b"data: [DONE]\n\n"])
    assert len(events) == 2
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "x"
    assert events[1] == "[DONE]"


async def test_stream_cut_before_done_ends_with_error_event_and_no_done():
    events = await relay(
        [sse(*(chunk(str(i)) for i in range(40)), done=False)],
        error=httpx.RemoteProtocolError("peer closed connection"),
    )
    assert len(events) == 41
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert error["type"] == "server_error"
    assert "[DONE]" not in events


async def test_stream_that_just_ends_without_done_is_truncated():
    events = await relay([sse(chunk("a"), done=False)])
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_truncated"


async def test_error_object_mid_stream_ends_stream_as_truncated():
    events = await relay([sse(chunk("a"), {"error": {"message": "engine died"}})])
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "a"
    error = json.loads(events[1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert "engine died" in error["message"]
    assert len(events) == 2


async def test_non_json_event_is_truncation_not_a_crash():
    events = await relay([b"data: {not json\n\n"])
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
