"""``SSEDecoder(max_line_bytes=...)`` holds no line, and no event's data, past its limit."""

from __future__ import annotations

import pytest

from r1edge.protocol.sse import SSEDecoder, SSETooLong


def test_a_line_without_an_end_is_refused_once_past_the_limit():
    decoder = SSEDecoder(max_line_bytes=1024)
    assert decoder.feed(b"data: " + b"x" * 1000) == []
    assert decoder.buffered == 1006
    with pytest.raises(SSETooLong, match="an SSE line longer than 1024 bytes"):
        decoder.feed(b"x" * 100)


def test_a_long_line_arriving_whole_is_refused_too():
    with pytest.raises(SSETooLong):
        SSEDecoder(max_line_bytes=1024).feed(b"data: " + b"x" * 2000 + b"\n\n")
    with pytest.raises(SSETooLong):  # the unfinished last line of a read
        SSEDecoder(max_line_bytes=1024).feed(b"data: {}\n\ndata: " + b"x" * 2000)


def test_the_data_of_one_event_is_bounded_across_lines():
    decoder = SSEDecoder(max_line_bytes=1024)
    line = b"data: " + b"d" * 500 + b"\n"
    assert decoder.feed(line + line) == []  # 1001 bytes of data: under the limit
    with pytest.raises(SSETooLong, match="the data of one SSE event longer than 1024 bytes"):
        decoder.feed(line)


def test_lines_and_events_at_the_limit_pass():
    decoder = SSEDecoder(max_line_bytes=1024)
    data = "y" * (1024 - len("data: "))
    assert decoder.feed(f"data: {data}\n\n".encode()) == [data]
    assert decoder.feed(b"data: a\ndata: b\n\n") == ["a\nb"]


def test_without_a_limit_nothing_is_refused():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: " + b"x" * 3_000_000 + b"\n\n") == ["x" * 3_000_000]
