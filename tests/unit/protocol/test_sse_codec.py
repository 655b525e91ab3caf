"""The one SSE codec (:class:`r1edge.protocol.sse.SSEDecoder`, :func:`parse_events`) against the
WHATWG HTML "Server-sent events" parsing rules: LF, CRLF and CR line ends, any split of the input
(every byte offset, a CRLF cut between its CR and LF, a UTF-8 character cut between two reads),
comments, multi-line data, events without data, fields without a space after the colon; and
:func:`iter_chunks` reading an upstream response through it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fakes import ChunkStream, chunk, sse

from r1edge.protocol import sse as sse_module
from r1edge.protocol.sse import SSEDecoder, StreamTruncated, iter_chunks, parse_events

#: One stream exercising every rule; its events, in order.
STREAM = (
    b": keep-alive\n\n"
    b"data: one\n\n"
    b"event: ping\nid: 7\nretry: 100\n\n"  # no data: not dispatched
    b"data:two\n\n"  # no space after the colon
    b"data:  three\n\n"  # only the first space is removed
    b"data: line 1\ndata: line 2\n\n"  # joined with LF
    b"data\n\n"  # a field name alone: empty data, dispatched
    b"data: h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82\n\n"
    b"id: 9\ndata: x\n: a comment inside an event\nevent: y\ndata: z\n\n"
    b"Data: not a data field\n\n"  # field names are case-sensitive
    b"data: [DONE]\n\n"
)
EVENTS = ["one", "two", " three", "line 1\nline 2", "", "héllo 世界 🙂", "x\nz", "[DONE]"]


def decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    return [event for piece in chunks for event in decoder.feed(piece)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_end_gives_the_same_events(newline):
    assert decode([STREAM.replace(b"\n", newline)]) == EVENTS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_the_input_split_at_every_byte_offset_gives_the_same_events(newline):
    stream = STREAM.replace(b"\n", newline)
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == EVENTS, cut


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_one_byte_at_a_time_gives_the_same_events(newline):
    stream = STREAM.replace(b"\n", newline)
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == EVENTS


def test_mixed_line_ends_in_one_stream():
    assert decode([b"data: a\r\n\rdata: b\n\r\ndata: c\r\r"]) == ["a", "b", "c"]


def test_a_crlf_cut_between_its_cr_and_lf_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # the LF of that CRLF, not a blank line
    assert decoder.feed(b"\r") == ["a"]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == ["b"]


def test_empty_reads_change_nothing():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # still the LF of the CRLF above
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == ["a"]


def test_an_event_is_dispatched_as_soon_as_its_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.buffered == 0
    assert decoder.feed(b"\ndata: b") == ["a"]
    assert decoder.buffered == len(b"data: b")  # an incomplete line waits for its end


def test_a_utf8_character_split_across_reads_arrives_whole():
    body = "data: 世🙂\n\n".encode()
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]) == ["世🙂"], cut
    assert decode([bytes([b]) for b in body]) == ["世🙂"]


def test_invalid_utf8_becomes_the_replacement_character():
    assert decode([b"data: a\xffb\xe4\xb8\n\n"]) == ["a\ufffdb\ufffd"]


def test_events_without_data_and_comments_are_not_dispatched():
    assert decode([b": only a comment\n\nevent: x\n\nid: 1\n\nretry: 5\n\n\n\n"]) == []


def test_an_unfinished_event_at_the_end_is_not_dispatched():
    # WHATWG: "Once the end of the file is reached, any pending data must be discarded."
    assert decode([b"data: a\n\ndata: b\n"]) == ["a"]


def test_parse_events_decodes_json_objects_and_keeps_the_rest_as_text():
    body = sse(chunk("a"), "[1, 2]", "not json") + b": comment\n\n"
    events = parse_events(body)
    assert events[0] == chunk("a")
    assert events[1:] == ["[1, 2]", "not json", "[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_parse_events_takes_a_last_event_without_its_blank_line(newline):
    body = b'data: {"a": 1}' + newline + newline + b"data: [DONE]"
    assert parse_events(body) == [{"a": 1}, "[DONE]"]
    assert parse_events(body + newline) == [{"a": 1}, "[DONE]"]
    assert parse_events(body + newline + newline) == [{"a": 1}, "[DONE]"]
    assert parse_events(b"") == []


# iter_chunks: upstream responses read through the decoder


def read(response: httpx.Response) -> list[dict]:
    async def run() -> list[dict]:
        return [c async for c in iter_chunks(response)]

    return asyncio.run(run())


def upstream(chunks: list[bytes], content_type: str = "text/event-stream", error: Exception | None = None):
    return httpx.Response(200, headers={"content-type": content_type}, stream=ChunkStream(chunks, error))


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_iter_chunks_reads_any_split_and_line_end(newline):
    body = (b": keep-alive\n\n" + sse(chunk("é"), chunk("b"))).replace(b"\n", newline)
    for cut in range(len(body) + 1):
        out = read(upstream([body[:cut], body[cut:]]))
        assert [c["choices"][0]["delta"]["content"] for c in out] == ["é", "b"], cut


def test_iter_chunks_skips_events_with_empty_data():
    assert len(read(upstream([b"data:\n\nevent: x\n\n" + sse(chunk("a"))]))) == 1


def test_iter_chunks_accepts_done_with_spaces_around_it():
    assert len(read(upstream([sse(chunk("a"), done=False) + b"data:  [DONE] \n\n"]))) == 1


@pytest.mark.parametrize(
    "content_type",
    ["text/event-stream", "text/event-stream; charset=utf-8", "x-text/event-stream-ish"],
)
def test_iter_chunks_takes_every_content_type_that_contains_text_event_stream(content_type):
    assert len(read(upstream([sse(chunk("a"))], content_type))) == 1


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [("application/json", "'application/json'"), ("Text/Event-Stream", "'Text/Event-Stream'"), ("", "''")],
)
def test_iter_chunks_refuses_a_body_that_is_not_an_event_stream(content_type, shown):
    with pytest.raises(StreamTruncated) as refused:
        read(upstream([sse(chunk("a"))], content_type))
    assert str(refused.value) == (
        "upstream stream failed: SSEError: Expected response header Content-Type to contain "
        f"'text/event-stream', got {shown}"
    )


def test_a_missing_content_type_is_refused():
    response = httpx.Response(200, stream=ChunkStream([sse(chunk("a"))]))
    with pytest.raises(StreamTruncated, match=r"got ''$"):
        read(response)


def test_iter_chunks_error_messages():
    cases = [
        ([sse(chunk("a"), done=False)], None, "upstream stream ended without data: [DONE]"),
        ([b"data: {x\n\n"], None, "upstream sent an event that is not JSON: '{x'"),
        ([b"data: NaN\n\n"], None, "upstream sent an event that is not JSON: 'NaN'"),
        ([b"data: [1]\n\n"], None, "upstream sent an event that is not a JSON object"),
        ([b'data: {"error": {"message": "boom"}}\n\n'], None, "upstream reported an error mid-stream: boom"),
        ([b'data: {"error": "flat"}\n\n'], None, "upstream reported an error mid-stream: flat"),
        (
            [b"data: {}\n\n"],
            httpx.RemoteProtocolError("peer closed"),
            "upstream stream failed: RemoteProtocolError: peer closed",
        ),
        ([b"data: {}\n"], httpx.ReadTimeout("slow"), "upstream stream failed: ReadTimeout: slow"),
    ]
    for chunks, error, message in cases:
        with pytest.raises(StreamTruncated) as truncated:
            read(upstream(chunks, error=error))
        assert str(truncated.value) == message


def test_a_long_non_json_event_is_shown_cut_to_80_characters():
    with pytest.raises(StreamTruncated) as truncated:
        read(upstream([b"data: " + b"z" * 200 + b"\n\n"]))
    assert str(truncated.value) == f"upstream sent an event that is not JSON: {'z' * 80!r}"


def test_an_error_while_draining_after_done_is_still_a_truncation():
    # As with httpx-sse before: the drain reads the same stream, so its failure surfaces.
    with pytest.raises(StreamTruncated, match="RemoteProtocolError"):
        read(upstream([sse(chunk("a"))], error=httpx.RemoteProtocolError("reset")))


def test_events_after_done_are_read_but_not_yielded():
    out = read(upstream([sse(chunk("a")) + sse(chunk("late"), done=False)]))
    assert [c["choices"][0]["delta"]["content"] for c in out] == ["a"]


def test_a_body_held_open_after_done_is_left_after_the_drain_seconds(monkeypatch):
    monkeypatch.setattr(sse_module, "DRAIN_SECONDS", 0.05)

    class HeldOpen(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield sse(chunk("a"))
            await asyncio.sleep(30)
            yield b"never"

    async def run() -> tuple[list[dict], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=HeldOpen())
        out = [c async for c in iter_chunks(response)]
        return out, loop.time() - started

    out, seconds = asyncio.run(run())
    assert len(out) == 1
    assert seconds < 5


def test_the_events_are_normalised():
    out = read(upstream([sse(chunk(reasoning="r"))]))
    assert out[0]["choices"][0]["delta"] == {"reasoning_content": "r"}
    assert json.dumps(out[0])  # plain JSON objects
