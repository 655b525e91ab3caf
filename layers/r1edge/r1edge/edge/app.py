"""The edge model server as an ASGI app: OpenAI-compatible ``/v1/chat/completions`` (JSON and
SSE), ``/v1/embeddings`` (a second llama.cpp context, loaded on the first request) and
``/v1/models`` over one GGUF model, plus ``/health``.

Environment: the model (``MODEL_PATH``, ``MODEL_URI``, ``MODEL_SHA256``; see
:mod:`r1edge.edge.model`), ``EDGE_N_CTX`` (context window in tokens, default 2048),
``EDGE_N_THREADS`` (default: all cores), ``EDGE_MAX_TOKENS`` (completion-token cap, default
1024), ``EDGE_MAX_QUEUE`` (requests waiting for the model before 503, default 4),
``EDGE_REASONING`` (``auto``, ``on`` or ``off``: split ``<think>`` output into
``reasoning_content``; see :mod:`r1edge.protocol.reasoning`), ``EDGE_MAX_BODY_BYTES`` (default 10 MiB).

Response headers beyond OpenAI's: ``x-r1edge-confidence`` (the geometric mean probability of the
generated tokens, see :class:`r1edge.edge.runtime.GenerationStats`) and ``x-r1edge-confidence-tokens``
(how many tokens it covers), on JSON answers and on streams that asked for a window;
``x-r1edge-max-tokens-clamped`` (the cap used, when the request asked for more). A streamed
request with ``x-r1edge-confidence-window: N`` (sent by the router for cascaded ``auto``
requests) holds its response until N tokens are generated (or the answer ends), so the
confidence of that prefix can go in the headers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from aws_lambda_powertools import Logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from r1edge import env
from r1edge.edge.model import resolve_model_path
from r1edge.edge.runtime import GenerationStats, LlamaRuntime
from r1edge.headers import (
    RETRY_AFTER,
    X_R1EDGE_CONFIDENCE,
    X_R1EDGE_CONFIDENCE_TOKENS,
    X_R1EDGE_CONFIDENCE_WINDOW,
    X_R1EDGE_MAX_TOKENS_CLAMPED,
)
from r1edge.observe import metrics
from r1edge.protocol import web
from r1edge.protocol.embeddings import encode_base64, validate_embeddings_request
from r1edge.protocol.errors import InvalidRequest, Overloaded, error_body
from r1edge.protocol.reasoning import ThinkMode, ThinkSplitter, split_text
from r1edge.protocol.sse import DONE, SSE_HEADERS, sse_data
from r1edge.protocol.validation import ChatRequest, message_text, parse_json_body, validate_chat_request

#: The edge's logger: the parent of the runtime's ``r1edge-edge`` child logger.
logger = Logger(service="r1edge-edge")

#: Longest confidence window (tokens) a request may ask for.
MAX_CONFIDENCE_WINDOW = 256

#: Request fields passed to ``Llama.create_chat_completion`` unchanged (validated upstream of
#: here by :func:`r1edge.protocol.validation.validate_chat_request`).
PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
RESPONSE_FORMATS = frozenset({"text", "json_object"})


def completion_kwargs(chat: ChatRequest, model_id: str, max_tokens_cap: int | None = None) -> dict[str, Any]:
    """Map a validated request to ``Llama.create_chat_completion`` keyword arguments.

    ``developer`` messages become ``system`` (the chat templates of small models know only
    system/user/assistant); content-part arrays are joined into one string. ``max_tokens``
    above ``max_tokens_cap`` is clamped to it (the handler says so in a header); absent, it
    stays ``None`` and the runtime's cap is the limit (``finish_reason: "length"`` when hit).

    Raises:
        InvalidRequest: features this edge model does not serve — ``n`` other than 1, ``tools``
            or ``functions``, ``logprobs``, a ``response_format`` other than ``text`` or
            ``json_object``, a malformed ``logit_bias``.
    """
    body = chat.body
    if body.get("n") not in (None, 1):
        raise InvalidRequest("The edge model returns one choice; 'n' must be 1.", param="n", code="unsupported_value")
    for name in ("tools", "functions"):
        if body.get(name):
            raise InvalidRequest(
                f"'{name}' is not supported by the edge model; use model 'deepseek-r1' or 'auto'.",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("logprobs"):
        raise InvalidRequest(
            "'logprobs' is not supported by the edge model.", param="logprobs", code="unsupported_parameter"
        )
    kwargs: dict[str, Any] = {
        "model": model_id,
        "messages": [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": message_text(m)}
            for m in chat.messages
        ],
        "max_tokens": chat.max_tokens
        if max_tokens_cap is None or chat.max_tokens is None
        else min(chat.max_tokens, max_tokens_cap),
    }
    kwargs.update({name: body[name] for name in PASSTHROUGH if body.get(name) is not None})
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in RESPONSE_FORMATS:
            raise InvalidRequest(
                "'response_format.type' must be 'text' or 'json_object' at the edge.",
                param="response_format",
                code="unsupported_value",
            )
        if response_format["type"] == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
    logit_bias = body.get("logit_bias")
    if logit_bias is not None:
        if not isinstance(logit_bias, dict) or not all(
            str(k).isascii()
            and str(k).isdigit()
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and -100 <= v <= 100
            for k, v in logit_bias.items()
        ):
            raise InvalidRequest(
                "'logit_bias' must map token ids to numbers between -100 and 100.",
                param="logit_bias",
                code="invalid_value",
            )
        kwargs["logit_bias"] = logit_bias
    return kwargs


def runtime_from_env(environ: dict[str, str] | None = None) -> LlamaRuntime:
    """Build (not load) the runtime from the environment (see the module docstring).

    Raises:
        ModelError: no usable model file (see :func:`r1edge.edge.model.resolve_model_path`).
        ValueError: a malformed number in ``EDGE_*``.
    """
    environ = os.environ if environ is None else environ
    threads = environ.get(env.EDGE_N_THREADS)
    return LlamaRuntime(
        resolve_model_path(environ),
        n_ctx=int(environ.get(env.EDGE_N_CTX, "2048")),
        n_threads=int(threads) if threads else None,
        max_tokens=int(environ.get(env.EDGE_MAX_TOKENS, "1024")),
        max_queue=int(environ.get(env.EDGE_MAX_QUEUE, "4")),
        reasoning=environ.get(env.EDGE_REASONING, "auto"),
    )


def emit_cold_start_metrics(rt: LlamaRuntime, recorder: metrics.Recorder | None = None) -> None:
    """Emit ``ModelImportTime`` and ``ModelLoadTime`` (milliseconds, dimension ``model``) as
    CloudWatch EMF through :mod:`r1edge.observe.metrics` (namespace ``POWERTOOLS_METRICS_NAMESPACE``,
    default ``r1edge``; ``POWERTOOLS_METRICS_DISABLED=true`` turns EMF off), and set
    ``r1edge_model_load_seconds{model,phase}`` for the edge's ``/metrics``."""
    recorder = recorder or metrics.default("edge")
    recorder.model_load(rt.model_id, rt.import_seconds or 0.0, rt.load_seconds or 0.0)
    recorder.flush()


def confidence_window(request: Request) -> int:
    """The ``x-r1edge-confidence-window`` header: tokens to generate before the response starts.

    Raises:
        InvalidRequest: not an integer from 0 to :data:`MAX_CONFIDENCE_WINDOW`.
    """
    raw = request.headers.get(X_R1EDGE_CONFIDENCE_WINDOW, "0").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3 or int(raw) > MAX_CONFIDENCE_WINDOW:
        raise InvalidRequest(
            f"Header {X_R1EDGE_CONFIDENCE_WINDOW} must be an integer from 0 to {MAX_CONFIDENCE_WINDOW}.",
            param=None,
            code="invalid_header",
        )
    return int(raw)


def confidence_headers(stats: GenerationStats) -> dict[str, str]:
    """``x-r1edge-confidence`` (4 decimals) and ``x-r1edge-confidence-tokens``, once a token exists."""
    if stats.confidence is None:
        return {}
    return {X_R1EDGE_CONFIDENCE: f"{stats.confidence:.4f}", X_R1EDGE_CONFIDENCE_TOKENS: str(stats.scored_tokens)}


def split_message(completion: dict[str, Any], mode: ThinkMode) -> dict[str, Any]:
    """Move ``<think>`` text of each choice's message into ``reasoning_content`` (in place)."""
    if mode is ThinkMode.OFF:
        return completion
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        reasoning, content = split_text(message.get("content") or "", mode)
        message["reasoning_content"] = reasoning
        message["content"] = content
    return completion


def split_chunk(chunk: dict[str, Any], splitter: ThinkSplitter | None) -> list[dict[str, Any]]:
    """The chunks to send for one runtime chunk: its ``delta.content`` split into a
    ``reasoning_content`` delta and a ``content`` delta (either may be held back for now); what
    is held is released before the chunk that carries the ``finish_reason``."""
    choices = chunk.get("choices") or []
    if splitter is None or not choices:
        return [chunk]
    choice = choices[0]
    delta = choice.get("delta") or {}
    reasoning, content = splitter.feed(delta.get("content") or "")
    if choice.get("finish_reason"):
        tail_reasoning, tail_content = splitter.flush()
        reasoning, content = reasoning + tail_reasoning, content + tail_content
    rest = {k: v for k, v in delta.items() if k != "content"}
    out = []
    for key, text in (("reasoning_content", reasoning), ("content", content)):
        if text:
            out.append({**chunk, "choices": [{**choice, "delta": {**rest, key: text}, "finish_reason": None}]})
            rest = {}
    if rest or choice.get("finish_reason"):
        out.append({**chunk, "choices": [{**choice, "delta": rest}]})
    return out


def create_app(runtime: LlamaRuntime | None = None, max_body_bytes: int | None = None) -> Starlette:
    """Build the edge app.

    Args:
        runtime: the model runtime; default :func:`runtime_from_env`. It is loaded at startup
            if it is not loaded yet, so the server accepts requests only once the model is in.
        max_body_bytes: request size limit in bytes (default ``EDGE_MAX_BODY_BYTES`` or 10 MiB).
    """
    limit = max_body_bytes or int(os.environ.get(env.EDGE_MAX_BODY_BYTES, str(10 * 1024 * 1024)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = runtime or runtime_from_env()
        if not rt.loaded:
            await anyio.to_thread.run_sync(rt.load)
            emit_cold_start_metrics(rt)
        app.state.runtime = rt
        app.state.created = int(time.time())
        yield

    async def chat_completions(request: Request) -> Response:
        rt: LlamaRuntime = request.app.state.runtime
        chat = validate_chat_request(parse_json_body(await web.read_body(request, limit)))
        window = confidence_window(request)
        kwargs = completion_kwargs(chat, rt.model_id, rt.max_tokens)
        headers = {}
        if chat.max_tokens is not None and chat.max_tokens > rt.max_tokens:
            headers[X_R1EDGE_MAX_TOKENS_CLAMPED] = str(rt.max_tokens)
        stats = GenerationStats()
        if not chat.stream:
            cancel = threading.Event()
            try:
                completion = await web.unless_disconnected(
                    request, lambda: rt.complete(kwargs, cancel, stats), cancel.set
                )
            except web.ClientDisconnected:
                return Response(status_code=web.CLIENT_CLOSED_REQUEST)
            headers.update(confidence_headers(stats))
            return JSONResponse(split_message(completion, rt.think_mode), headers=headers)
        include_usage = bool((chat.body.get("stream_options") or {}).get("include_usage"))
        chunks = rt.stream(kwargs, stats)

        async def hold() -> list[dict[str, Any]]:
            # Context-length and queue refusals surface at the first chunk, before any byte is sent.
            held = [await anext(chunks)]
            while stats.completion_tokens < window and not held[-1].get("usage"):
                held.append(await anext(chunks))
            return held

        try:  # a client that leaves while queued or held frees its place and stops its generation
            held = await web.unless_disconnected(request, hold)
        except web.ClientDisconnected:
            await chunks.aclose()  # type: ignore[attr-defined]
            return Response(status_code=web.CLIENT_CLOSED_REQUEST)
        except BaseException:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise
        if window:  # without a window the figure would cover a token or two: not worth a header
            headers.update(confidence_headers(stats))
        splitter = None if rt.think_mode is ThinkMode.OFF else ThinkSplitter(rt.think_mode)
        return web.ClosingStreamingResponse(
            _sse(held, chunks, include_usage, splitter),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )

    async def embeddings(request: Request) -> Response:
        """OpenAI ``POST /v1/embeddings`` (API reference, "Embeddings") from the GGUF model:
        ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
        "usage": {"prompt_tokens", "total_tokens"}}``, each embedding a list of floats or, for
        ``encoding_format: base64``, little-endian float32 bytes in base64. ``dimensions`` other
        than the model's size is a 400 (its vectors cannot be shortened); ``model`` is ignored
        and the answer names the edge's model."""
        rt: LlamaRuntime = request.app.state.runtime
        ask = validate_embeddings_request(parse_json_body(await web.read_body(request, limit)))
        size = rt.embedding_size()
        if ask.dimensions is not None and ask.dimensions != size:
            raise InvalidRequest(
                f"'dimensions' must be {size}, the size of this model's embeddings (they cannot be shortened).",
                param="dimensions",
                code="unsupported_value",
            )
        vectors, tokens = await rt.embed(ask.inputs)
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_base64(vector) if ask.encoding_format == "base64" else vector,
            }
            for index, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": rt.model_id, "usage": usage})

    async def models(request: Request) -> Response:
        rt: LlamaRuntime = request.app.state.runtime
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": rt.model_id, "object": "model", "created": request.app.state.created, "owned_by": "r1edge"}
                ],
            }
        )

    async def health(request: Request) -> Response:
        rt: LlamaRuntime | None = getattr(request.app.state, "runtime", None)
        if rt is None or not rt.loaded:
            raise Overloaded("The model is still loading.", headers={RETRY_AFTER: "1"})
        return JSONResponse({"status": "ok", "model": rt.model_id, "n_ctx": rt.n_ctx, "load_seconds": rt.load_seconds})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.default("edge").prometheus_text(), media_type=metrics.PROMETHEUS_CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ping", health, methods=["GET"]),  # the Lambda Web Adapter's readiness check
            Route("/metrics", prometheus, methods=["GET"]),  # Prometheus text: the model's load time
        ],
        middleware=web.middleware(),
        exception_handlers=web.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


async def _sse(
    held: list[dict[str, Any]],
    chunks: AsyncIterator[dict[str, Any]],
    include_usage: bool,
    splitter: ThinkSplitter | None,
) -> AsyncIterator[bytes]:
    """Encode runtime chunks as SSE (the ``held`` ones first), reasoning split out when the model
    thinks; the final usage chunk only when the client asked for it."""

    def encode(chunk: dict[str, Any]) -> list[bytes]:
        out = split_chunk(chunk, splitter) if chunk.get("choices") else [chunk]
        return [sse_data(c) for c in out if c.get("choices") or include_usage]

    try:
        for chunk in held:
            for data in encode(chunk):
                yield data
        while (chunk := await anext(chunks, None)) is not None:
            for data in encode(chunk):
                yield data
    except Exception as exc:
        logger.exception("generation failed mid-stream")
        yield sse_data(error_body(f"generation failed: {exc}", "server_error", None, "generation_failed"))
        return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
