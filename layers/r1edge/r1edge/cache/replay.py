"""Streams and completions, both ways: :class:`StreamAssembler` builds the ``chat.completion`` a
stream of chunks amounts to (so a streamed answer can be stored), and :func:`replay_sse` streams a
stored completion back as SSE chunks ending with ``data: [DONE]``, ``reasoning_content`` and
``usage`` kept (usage as a last chunk when the request asks ``stream_options.include_usage``, as
OpenAI streams do). Pure: no I/O. SSE is written with :mod:`r1edge.protocol.sse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from r1edge.protocol.sse import DONE, sse_data


class StreamAssembler:
    """Builds the ``chat.completion`` object a stream amounts to, from its chunk objects.

    Per choice ``index``: ``content`` and ``reasoning_content`` concatenated, ``tool_calls``
    merged by their ``index`` (``arguments`` concatenated), ``logprobs.content`` joined, the last
    ``finish_reason``; ``usage`` from the chunk that carries it. ``failed`` is set by an error
    event; :meth:`result` is then ``None``.
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.failed = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """Take one chunk object (an ``error`` object marks the stream failed)."""
        if "error" in chunk:
            self.failed = True
            return
        for name in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(name) is not None and name not in self.head:
                self.head[name] = chunk[name]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = self.choices.setdefault(
                index, {"role": None, "content": None, "reasoning": None, "tools": {}, "logprobs": None, "finish": None}
            )
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if delta.get("role"):
                state["role"] = delta["role"]
            for name, slot in (("content", "content"), ("reasoning_content", "reasoning")):
                if isinstance(delta.get(name), str):
                    state[slot] = (state[slot] or "") + delta[name]
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._tool_call(state["tools"], call)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                state["logprobs"] = (state["logprobs"] or []) + logprobs["content"]
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    @staticmethod
    def _tool_call(tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        slot = tools.setdefault(call.get("index", len(tools)), {"function": {"name": "", "arguments": ""}})
        for name in ("id", "type"):
            if call.get(name):
                slot[name] = call[name]
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        for name in ("name", "arguments"):
            if isinstance(function.get(name), str):
                slot["function"][name] += function[name]

    def result(self) -> dict[str, Any] | None:
        """The assembled completion, or ``None`` after an error event or with no choice."""
        if self.failed or not self.choices:
            return None
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {"role": state["role"] or "assistant", "content": state["content"]}
            if state["reasoning"] is not None:
                message["reasoning_content"] = state["reasoning"]
            if state["tools"]:
                message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
            choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": state["finish"]}
            choice["logprobs"] = {"content": state["logprobs"]} if state["logprobs"] is not None else None
            choices.append(choice)
        completion: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self.head:
            completion["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that stream ``completion``: per choice a role delta,
    a ``reasoning_content`` delta, a ``content`` delta, ``tool_calls``, and a ``finish_reason``
    chunk; then, when ``include_usage``, a ``choices: []`` chunk with ``usage`` (OpenAI's
    ``stream_options.include_usage``)."""
    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    chunks = []
    for choice in completion.get("choices", []):
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append(chunk(index, {"role": message.get("role") or "assistant", "content": ""}))
        if message.get("reasoning_content"):
            chunks.append(chunk(index, {"reasoning_content": message["reasoning_content"]}))
        if message.get("content"):
            chunks.append(chunk(index, {"content": message["content"]}, logprobs=choice.get("logprobs")))
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            chunks.append(chunk(index, {"tool_calls": calls}))
        chunks.append(chunk(index, {}, finish=choice.get("finish_reason")))
    if include_usage and completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


async def replay_sse(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """:func:`replay_chunks` as SSE events, then ``data: [DONE]``."""
    for chunk in replay_chunks(completion, include_usage):
        yield sse_data(chunk)
    yield DONE
