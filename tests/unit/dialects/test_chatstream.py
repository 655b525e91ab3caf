"""The one reader of the pipeline's chat stream for every dialect: what it reports, and that
leaving its block — finished, failed, or abandoned before the first event — closes the stream."""

from __future__ import annotations

import asyncio

from r1edge.dialects.chatstream import chat_events


class Source:
    """An async iterator of SSE pieces that records whether it was closed."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.closed = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        if not self.pieces:
            raise StopAsyncIteration
        return self.pieces.pop(0)

    async def aclose(self) -> None:
        self.closed = True


async def kinds(source: Source) -> list[str]:
    async with chat_events(source) as events:
        return [event.kind async for event in events]


def test_the_reader_says_what_the_stream_said_across_any_split():
    source = Source(b": keep-alive\n\n", b'data: {"choices": []}\n', b"\ndata: not json\n\ndata: [DO", b"NE]\n\n")
    assert asyncio.run(kinds(source)) == ["keep-alive", "chunk", "unreadable", "done"]
    assert source.closed


def test_an_error_event_ends_it_and_a_cut_stream_says_ended():
    error = Source(b'data: {"error": {"message": "cut", "code": "upstream_stream_truncated"}}\n\n', b"data: {}\n\n")
    cut = Source(b'data: {"choices": []}\n\n')
    assert asyncio.run(kinds(error)) == ["error"]
    assert asyncio.run(kinds(cut)) == ["chunk", "ended"]


def test_the_error_message_is_the_events_own_or_the_default():
    async def first(source: Source):
        async with chat_events(source) as events:
            return await anext(events)

    event = asyncio.run(first(Source(b'data: {"error": {"message": "boom"}}\n\n')))
    assert (event.kind, event.error_message("fallback")) == ("error", "boom")
    assert asyncio.run(first(Source(b""))).error_message("fallback") == "fallback"


def test_leaving_the_block_closes_the_stream_even_before_the_first_event():
    async def leave_at_once(source: Source) -> None:
        async with chat_events(source):
            pass

    async def leave_after_one(source: Source) -> None:
        async with chat_events(source) as events:
            await anext(events)

    untouched, started = Source(b"data: {}\n\n"), Source(b"data: {}\n\n", b"data: {}\n\n")
    asyncio.run(leave_at_once(untouched))
    asyncio.run(leave_after_one(started))
    assert (untouched.closed, started.closed) == (True, True)
    assert started.pieces == [b"data: {}\n\n"]  # nothing read past the point the reader left
