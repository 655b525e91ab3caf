"""The edge model runtime: one GGUF model in one llama.cpp context, through llama-cpp-python.

A llama.cpp context is not safe for concurrent use, so every call into it is serialized with one
lock per runtime; a streamed completion holds the lock until its last token (or until the
client goes away and the stream is closed). The model is loaded once per process and its load
time logged. The chat template comes from the model's own GGUF metadata
(``tokenizer.chat_template``), which llama-cpp-python applies when no ``chat_format`` is given.

Usage counts are exact: for JSON answers they are llama-cpp-python's own; streamed answers count
the same tokens, observed in ``Llama.generate``: prompt tokens as fed to the model, and every
sampled token except an end-of-generation token, which llama-cpp-python does not count either.

Confidence: for every sampled token, ``Llama.generate`` is observed once more to read the
log-probability the model gave that token, from the logits llama.cpp already holds for the last
position (``llama_get_logits_ith(ctx, -1)``; no ``logits_all``, which would cost speed). A
generation's confidence is the geometric mean of those probabilities, ``exp(mean log p)``, in
``(0, 1]``: the model's own, untempered distribution, whatever the sampling settings.

Capacity: one generation at a time per model; at most ``max_queue`` more requests wait for it,
and the next one is refused at once with 503 and ``Retry-After`` (never an unbounded pile-up).
In Lambda each container takes one request at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aws_lambda_powertools import Logger

from r1edge.edge.model import ModelError
from r1edge.headers import RETRY_AFTER
from r1edge.protocol.errors import ContextLengthExceeded, Overloaded
from r1edge.protocol.reasoning import ThinkMode, think_mode

logger = Logger(service="r1edge-edge", child=True)


@dataclass
class GenerationStats:
    """What one generation did, filled in by the worker thread as tokens are sampled.

    Attributes:
        prompt_tokens: tokens fed to the model for the prompt.
        completion_tokens: sampled tokens, an end-of-generation token excepted (OpenAI's count).
        logprob_sum: sum of the natural-log probabilities of every sampled token.
        scored_tokens: how many tokens ``logprob_sum`` covers (end-of-generation included).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprob_sum: float = 0.0
    scored_tokens: int = 0

    @property
    def confidence(self) -> float | None:
        """Geometric mean probability of the sampled tokens, ``exp(logprob_sum / scored_tokens)``,
        in ``(0, 1]``; ``None`` before the first token."""
        return math.exp(self.logprob_sum / self.scored_tokens) if self.scored_tokens else None


def _counting_llama_class() -> type:
    """A ``llama_cpp.Llama`` subclass that records each generation's token counts and token
    log-probabilities into a :class:`GenerationStats`, stops at a cancel event, and refuses a
    prompt plus an explicit ``max_tokens`` that does not fit the context."""
    import llama_cpp
    import numpy as np

    class CountingLlama(llama_cpp.Llama):
        stats: GenerationStats | None = None
        cancel: threading.Event | None = None  # set: stop generating at the next token
        requested_max_tokens: int | None = None

        def _token_logprob(self, token: int) -> float:
            logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self._n_vocab,))
            peak = float(logits.max())
            return float(logits[token]) - peak - math.log(float(np.exp(logits - peak).sum()))

        def generate(self, tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
            stats = self.stats if self.stats is not None else GenerationStats()
            # ``tokens`` is mutated by the parent generator, so its length is taken first.
            stats.prompt_tokens = len(tokens)
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
                eog = llama_cpp.llama_vocab_is_eog(self._model.vocab, token)
                stats.logprob_sum += self._token_logprob(token)
                stats.scored_tokens += 1
                if not eog:
                    stats.completion_tokens += 1
                sent = yield token

    return CountingLlama


class LlamaRuntime:
    """One GGUF model behind a lock, with a bounded queue in front of it.

    Args:
        model_path: path of the ``.gguf`` file.
        n_ctx: context window in tokens (prompt plus completion).
        n_threads: CPU threads for generation (default: every core this process may use).
        max_tokens: the edge's cap on completion tokens; also the limit when a request sets none.
        max_queue: requests that may wait while one generates; one more is refused with 503.
        reasoning: ``auto``, ``on`` or ``off`` (see :func:`r1edge.protocol.reasoning.think_mode`).
        embedding_ctx: longest input :meth:`embed` takes, tokens (default 512); the embedding
            context, loaded on the first embeddings request, is this size.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 1024,
        max_queue: int = 4,
        reasoning: str = "auto",
        embedding_ctx: int = 512,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.max_tokens = max_tokens
        self.max_queue = max_queue
        self.reasoning = reasoning
        self.think_mode = ThinkMode.OFF
        self.model_id = self.model_path.name.removesuffix(".gguf")
        self.import_seconds: float | None = None
        self.load_seconds: float | None = None
        self._llama: Any = None
        #: Longest input :meth:`embed` takes (tokens); also the embedding context's size.
        self.embedding_ctx = embedding_ctx
        self._embedding_llama: Any = None
        # A semaphore, not a Lock: a stream is started by the request handler and finished by the
        # response task, and an anyio Lock must be released by the task that took it.
        self._lock = anyio.Semaphore(1)
        self._waiting = 0
        # Held by the worker thread for as long as it is inside llama.cpp, whatever happens to the
        # coroutine that started it: a cancelled request can never overlap the next one.
        self._context = threading.Semaphore(1)
        # Every llama.cpp call runs on this one thread. llama.cpp's CPU backend parallelises with
        # OpenMP, which keeps a thread team per calling thread whose idle workers spin for a
        # while: calls from changing threads leave teams spinning against each other, about
        # 15 % of decode speed on 2 cores (tests/bench/bench_edge.py measures it).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    def load(self) -> None:
        """Load the model (blocking; from async code call it in a worker thread), time the
        import of llama.cpp and the load, and choose the think mode from the chat template.

        Raises:
            ModelError: llama.cpp could not load the file (corrupt, truncated, or a GGUF
                version or architecture this llama.cpp does not know).
        """
        started = time.perf_counter()
        llama_class = _counting_llama_class()
        self.import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        try:
            self._llama = self._executor.submit(
                llama_class, model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
            ).result()
        except ValueError as exc:
            raise ModelError(
                f"llama.cpp cannot load {self.model_path} ({self.model_path.stat().st_size} bytes): the file is "
                f"corrupt or truncated, or its GGUF version or architecture is unknown to this llama.cpp ({exc})"
            ) from None
        self.load_seconds = time.perf_counter() - started
        self.think_mode = think_mode(self.reasoning, self._llama.metadata.get("tokenizer.chat_template"), _render)
        logger.info(
            "model loaded",
            extra={
                "model": self.model_id,
                "path": str(self.model_path),
                "n_ctx": self.n_ctx,
                "n_threads": self.n_threads,
                "think_mode": self.think_mode.value,
                "import_ms": round(self.import_seconds * 1000, 1),
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

    def _begin(self, cancel: threading.Event | None, kwargs: dict[str, Any], stats: GenerationStats) -> dict[str, Any]:
        """In a worker thread: take the context (waiting for any abandoned generation to stop),
        and return the call's arguments. A request's own ``max_tokens`` must fit the context
        with the prompt (refused otherwise, as OpenAI does); without one, :attr:`max_tokens` is
        the limit, which llama-cpp-python shortens to what the context has room for."""
        self._context.acquire()
        self._llama.cancel = cancel
        self._llama.requested_max_tokens = kwargs.get("max_tokens")
        self._llama.stats = stats
        if kwargs.get("max_tokens") is None:
            return {**kwargs, "max_tokens": self.max_tokens}
        return kwargs

    def _end(self) -> None:
        """In a worker thread: free the context."""
        self._llama.cancel = None
        self._llama.requested_max_tokens = None
        self._llama.stats = None
        self._context.release()

    def _complete_in_thread(
        self, kwargs: dict[str, Any], cancel: threading.Event | None, stats: GenerationStats
    ) -> Any:
        call = self._begin(cancel, kwargs, stats)
        try:
            return self._create({**call, "stream": False})
        finally:
            self._end()

    def _produce(
        self,
        kwargs: dict[str, Any],
        cancel: threading.Event,
        stats: GenerationStats,
        items: queue.SimpleQueue[tuple[str, Any]],
        loop: asyncio.AbstractEventLoop,
        ready: asyncio.Event,
    ) -> None:
        """In a worker thread: generate a whole stream into ``items`` without waiting for the
        consumer (a hand-off per token would sit on every token's critical path), waking the
        event loop after each chunk; ends with ``("end", None)`` or ``("error", exc)``."""
        call = self._begin(cancel, kwargs, stats)
        try:
            chunks = self._create({**call, "stream": True})
            try:
                for chunk in chunks:
                    items.put(("chunk", chunk))
                    loop.call_soon_threadsafe(ready.set)
                    if cancel.is_set():
                        break
            finally:
                chunks.close()
            items.put(("end", None))
        except ValueError as exc:  # llama-cpp-python checks the context on the first ``next``
            items.put(("error", self._translate(exc)))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            items.put(("error", exc))
        finally:
            self._end()
            loop.call_soon_threadsafe(ready.set)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Wait for the model, in a queue of at most ``max_queue``.

        Raises:
            Overloaded: the queue is full (503, ``Retry-After: 1``).
        """
        if self._lock.value == 0 and self._waiting >= self.max_queue:
            raise Overloaded(
                f"The edge model is busy ({self._waiting} requests already waiting).", headers={RETRY_AFTER: "1"}
            )
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    async def complete(
        self,
        kwargs: dict[str, Any],
        cancel: threading.Event | None = None,
        stats: GenerationStats | None = None,
    ) -> dict[str, Any]:
        """Run one non-streamed chat completion.

        Args:
            kwargs: keyword arguments of ``Llama.create_chat_completion`` (without ``stream``);
                ``max_tokens`` ``None`` means up to :attr:`max_tokens`.
            cancel: when set (the client went away), generation stops at the next token and
                the context is freed for the next request; the partial result is discarded.
            stats: filled in with the generation's token counts and log-probabilities.

        Returns:
            The OpenAI-shaped chat completion, ``usage`` included.

        Raises:
            ContextLengthExceeded: the prompt, or the prompt plus ``max_tokens``, does not fit
                ``n_ctx`` (OpenAI refuses such requests rather than shortening the answer).
            Overloaded: :attr:`max_queue` requests are already waiting.
        """
        async with self._turn():
            future = self._executor.submit(
                self._complete_in_thread, kwargs, cancel, stats if stats is not None else GenerationStats()
            )
            with anyio.CancelScope(shield=True):  # a cancelled caller still waits for the thread
                return await asyncio.wrap_future(future)

    async def stream(
        self, kwargs: dict[str, Any], stats: GenerationStats | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one streamed chat completion, yielding chunk objects as tokens are generated.

        ``stats`` (when given) is up to date each time a chunk is yielded. The last item is a
        usage chunk, ``{"id", "object": "chat.completion.chunk", "created", "model",
        "choices": [], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}`` (the
        shape OpenAI sends for ``stream_options.include_usage``). Closing the iterator early
        (client gone) stops generation at the next token and frees the context.

        Raises:
            ContextLengthExceeded: the prompt, or the prompt plus ``max_tokens``, does not fit
                ``n_ctx`` (before any chunk).
            Overloaded: :attr:`max_queue` requests are already waiting (before any chunk).
        """
        stats = stats if stats is not None else GenerationStats()
        async with self._turn():
            loop = asyncio.get_running_loop()
            cancel = threading.Event()
            items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
            ready = asyncio.Event()
            future = loop.run_in_executor(self._executor, self._produce, kwargs, cancel, stats, items, loop, ready)
            last: dict[str, Any] | None = None
            try:
                while True:
                    await ready.wait()
                    ready.clear()
                    while not items.empty():
                        kind, item = items.get()
                        if kind == "error":
                            raise item
                        if kind == "end":
                            break
                        last = item
                        yield item
                    else:
                        continue
                    break
            finally:
                cancel.set()  # the producer stops at its next token
                with anyio.CancelScope(shield=True):
                    await asyncio.shield(future)  # ... and frees the context before the next turn
            yield {
                "id": last["id"] if last else "",
                "object": "chat.completion.chunk",
                "created": last["created"] if last else int(time.time()),
                "model": last["model"] if last else self.model_id,
                "choices": [],
                "usage": {
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "total_tokens": stats.prompt_tokens + stats.completion_tokens,
                },
            }

    # Embeddings: a second llama.cpp context over the same file, made on first use.

    def _embedder(self) -> Any:
        """In the llama thread: the embedding instance, loaded on first use (``embedding=True``
        and mean pooling, which a context made for generation cannot do: llama-cpp-python
        refuses ``embed`` on it). Its context is :attr:`embedding_ctx` tokens, the longest input
        it embeds; about 170 MiB more resident memory for the 135M model (measured)."""
        if self._embedding_llama is None:
            import llama_cpp

            started = time.perf_counter()
            self._embedding_llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.embedding_ctx,
                n_batch=self.embedding_ctx,
                n_ubatch=self.embedding_ctx,
                n_threads=self.n_threads,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
            logger.info(
                "embedding model loaded",
                extra={"model": self.model_id, "load_ms": round((time.perf_counter() - started) * 1000, 1)},
            )
        return self._embedding_llama

    def _embed_in_thread(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        llama = self._embedder()
        for index, text in enumerate(inputs):
            count = len(llama.tokenize(text.encode("utf-8")))
            if count > self.embedding_ctx:
                raise ContextLengthExceeded(
                    f"'input[{index}]' has {count} tokens; this model embeds at most {self.embedding_ctx} "
                    "tokens per input (nothing is cut).",
                    param="input",
                )
        vectors, tokens = llama.embed(inputs, truncate=False, return_count=True)
        return [[float(x) for x in v] for v in vectors], int(tokens)

    def embedding_size(self) -> int:
        """The model's embedding size (``n_embd``): the length of every vector :meth:`embed` returns."""
        return int(self._llama.n_embd())

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """Embed strings with the model: one mean-pooled vector of :meth:`embedding_size` floats
        per input (not normalised), and the prompt tokens counted, in the same queue as
        generations (one llama.cpp call at a time, on the llama thread).

        Raises:
            ContextLengthExceeded: an input longer than :attr:`embedding_ctx` tokens (refused
                whole, never truncated).
            Overloaded: :attr:`max_queue` requests are already waiting.
        """
        async with self._turn():
            future = self._executor.submit(self._embed_in_thread, inputs)
            with anyio.CancelScope(shield=True):
                return await asyncio.wrap_future(future)


def _render(template: str) -> str:
    """Render a chat template for one user message with the generation prompt, through
    llama-cpp-python's own Jinja formatter (the one that serves requests)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
    return formatter(messages=[{"role": "user", "content": "Hello"}]).prompt
