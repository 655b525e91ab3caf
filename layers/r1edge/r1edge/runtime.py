"""The edge model runtime: one GGUF model in one llama.cpp context, through llama-cpp-python.

A llama.cpp context is not safe for concurrent use, so every call into it is serialized with one
lock per runtime; a streamed completion holds the lock until its last token (or until the
client goes away and the stream is closed). The model is loaded once per process and its load
time logged. The chat template comes from the model's own GGUF metadata
(``tokenizer.chat_template``), which llama-cpp-python applies when no ``chat_format`` is given.

Usage counts are exact: for JSON answers they are llama-cpp-python's own; streamed answers count
the same tokens, observed in ``Llama.generate``: prompt tokens as fed to the model, and every
sampled token except an end-of-generation token, which llama-cpp-python does not count either.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from r1edge.errors import ContextLengthExceeded

logger = Logger(service="r1edge-edge", child=True)


def _counting_llama_class() -> type:
    """A ``llama_cpp.Llama`` subclass that records the token counts of its last generation."""
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        last_prompt_tokens = 0
        last_completion_tokens = 0
        cancel: threading.Event | None = None  # set: stop generating at the next token
        requested_max_tokens: int | None = None

        def generate(self, tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
            # ``tokens`` is mutated by the parent generator, so its length is taken first.
            self.last_prompt_tokens = len(tokens)
            self.last_completion_tokens = 0
            wanted = self.requested_max_tokens
            if wanted is not None and len(tokens) + wanted > self._n_ctx:
                # llama-cpp-python would quietly shrink max_tokens to fit: refuse, as OpenAI does.
                raise ValueError(
                    f"Requested tokens ({len(tokens)} in the messages + {wanted} for the completion) "
                    f"exceed context window of {self._n_ctx}"
                )
            inner = super().generate(tokens, *args, **kwargs)
            sent = None
            while True:
                try:
                    token = inner.send(sent)
                except StopIteration:
                    return
                if self.cancel is not None and self.cancel.is_set():
                    inner.close()
                    return
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    self.last_completion_tokens += 1
                sent = yield token

    return CountingLlama


class LlamaRuntime:
    """One GGUF model behind a lock.

    Args:
        model_path: path of the ``.gguf`` file.
        n_ctx: context window in tokens (prompt plus completion).
        n_threads: CPU threads for generation (default: every core this process may use).
    """

    def __init__(self, model_path: str | os.PathLike[str], n_ctx: int = 2048, n_threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.model_id = self.model_path.name.removesuffix(".gguf")
        self.load_seconds: float | None = None
        self._llama: Any = None
        # A semaphore, not a Lock: a stream is started by the request handler and finished by the
        # response task, and an anyio Lock must be released by the task that took it.
        self._lock = anyio.Semaphore(1)
        # Held by the worker thread for as long as it is inside llama.cpp, whatever happens to the
        # coroutine that started it: a cancelled request can never overlap the next one.
        self._context = threading.Semaphore(1)
        self._generator_lock = threading.Lock()  # a stream's ``next`` and its ``close`` never overlap

    def load(self) -> None:
        """Load the model (blocking; call once, from a worker thread in async code).

        Raises:
            ValueError: llama.cpp could not load the file.
        """
        started = time.perf_counter()
        self._llama = _counting_llama_class()(
            model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
        )
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "model loaded",
            extra={
                "model": self.model_id,
                "path": str(self.model_path),
                "n_ctx": self.n_ctx,
                "n_threads": self.n_threads,
                "load_ms": round(self.load_seconds * 1000, 1),
            },
        )

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has finished."""
        return self._llama is not None

    def _translate(self, exc: ValueError) -> Exception:
        if "exceed context window" in str(exc):
            return ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens; {exc}.", param="messages"
            )
        return exc

    def _create(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self._llama.create_chat_completion(**kwargs)
        except ValueError as exc:
            raise self._translate(exc) from None

    def _next(self, chunks: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
        with self._generator_lock:
            try:
                return next(chunks, None)
            except ValueError as exc:  # llama-cpp-python checks the context on the first ``next``
                raise self._translate(exc) from None

    def _begin(self, cancel: threading.Event | None, max_tokens: int | None) -> None:
        """In a worker thread: take the context (waiting for any abandoned generation to stop)."""
        self._context.acquire()
        self._llama.cancel = cancel
        self._llama.requested_max_tokens = max_tokens

    def _end(self, chunks: Iterator[dict[str, Any]] | None = None) -> tuple[int, int]:
        """In a worker thread: close a stream's generator (after any ``next`` in flight), free
        the context, and return the last generation's ``(prompt, completion)`` token counts."""
        try:
            if chunks is not None:
                with self._generator_lock:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            return self._llama.last_prompt_tokens, self._llama.last_completion_tokens
        finally:
            self._llama.cancel = None
            self._llama.requested_max_tokens = None
            self._context.release()

    def _complete_in_thread(self, kwargs: dict[str, Any], cancel: threading.Event | None) -> Any:
        self._begin(cancel, kwargs.get("max_tokens"))
        try:
            return self._create({**kwargs, "stream": False})
        finally:
            self._end()

    async def complete(self, kwargs: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        """Run one non-streamed chat completion.

        Args:
            kwargs: keyword arguments of ``Llama.create_chat_completion`` (without ``stream``).
            cancel: when set (the client went away), generation stops at the next token and
                the context is freed for the next request; the partial result is discarded.

        Returns:
            The OpenAI-shaped chat completion, ``usage`` included.

        Raises:
            ContextLengthExceeded: the prompt, or the prompt plus ``max_tokens``, does not fit
                ``n_ctx`` (OpenAI refuses such requests rather than shortening the answer).
        """
        async with self._lock:
            return await anyio.to_thread.run_sync(self._complete_in_thread, kwargs, cancel)

    async def stream(self, kwargs: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one streamed chat completion, yielding chunk objects as tokens are generated.

        The last item is a usage chunk, ``{"id", "object": "chat.completion.chunk", "created",
        "model", "choices": [], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``
        (the shape OpenAI sends for ``stream_options.include_usage``). Closing the iterator early
        (client gone) stops generation at the next token and frees the context.

        Raises:
            ContextLengthExceeded: the prompt, or the prompt plus ``max_tokens``, does not fit
                ``n_ctx`` (before any chunk).
        """
        async with self._lock:
            cancel = threading.Event()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._begin, cancel, kwargs.get("max_tokens"))
            chunks: Iterator[dict[str, Any]] | None = None
            last: dict[str, Any] | None = None
            try:
                chunks = await anyio.to_thread.run_sync(self._create, {**kwargs, "stream": True})
                while (chunk := await anyio.to_thread.run_sync(self._next, chunks)) is not None:
                    last = chunk
                    yield chunk
            finally:
                cancel.set()  # a ``next`` still running for a cancelled caller stops at its next token
                with anyio.CancelScope(shield=True):
                    prompt, completion = await anyio.to_thread.run_sync(self._end, chunks)
            yield {
                "id": last["id"] if last else "",
                "object": "chat.completion.chunk",
                "created": last["created"] if last else int(time.time()),
                "model": last["model"] if last else self.model_id,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
