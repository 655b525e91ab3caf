"""The edge model server as an ASGI app: OpenAI-compatible ``/v1/chat/completions`` (JSON and
SSE) and ``/v1/models`` over one GGUF model, plus ``/health``.

Environment: ``MODEL_PATH`` (default: the packaged SmolLM2, see :mod:`r1edge.model`),
``EDGE_N_CTX`` (context window in tokens, default 2048), ``EDGE_N_THREADS`` (default: all
cores), ``EDGE_MAX_BODY_BYTES`` (default 10 MiB).
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

from r1edge import web
from r1edge.errors import InvalidRequest, Overloaded, error_body
from r1edge.model import resolve_model_path
from r1edge.relay import DONE, SSE_HEADERS, sse_data
from r1edge.runtime import LlamaRuntime
from r1edge.validation import ChatRequest, message_text, parse_json_body, validate_chat_request

logger = Logger(service="r1edge-edge", child=True)

#: Request fields passed to ``Llama.create_chat_completion`` unchanged (validated upstream of
#: here by :func:`r1edge.validation.validate_chat_request`).
PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
RESPONSE_FORMATS = frozenset({"text", "json_object"})


def completion_kwargs(chat: ChatRequest, model_id: str) -> dict[str, Any]:
    """Map a validated request to ``Llama.create_chat_completion`` keyword arguments.

    ``developer`` messages become ``system`` (the chat templates of small models know only
    system/user/assistant); content-part arrays are joined into one string.

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
        "max_tokens": chat.max_tokens,
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
    """Build (not load) the runtime from ``MODEL_PATH``, ``EDGE_N_CTX`` and ``EDGE_N_THREADS``."""
    environ = os.environ if environ is None else environ
    threads = environ.get("EDGE_N_THREADS")
    return LlamaRuntime(
        resolve_model_path(environ),
        n_ctx=int(environ.get("EDGE_N_CTX", "2048")),
        n_threads=int(threads) if threads else None,
    )


def create_app(runtime: LlamaRuntime | None = None, max_body_bytes: int | None = None) -> Starlette:
    """Build the edge app.

    Args:
        runtime: the model runtime; default :func:`runtime_from_env`. It is loaded at startup
            if it is not loaded yet, so the server accepts requests only once the model is in.
        max_body_bytes: request size limit in bytes (default ``EDGE_MAX_BODY_BYTES`` or 10 MiB).
    """
    limit = max_body_bytes or int(os.environ.get("EDGE_MAX_BODY_BYTES", str(10 * 1024 * 1024)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = runtime or runtime_from_env()
        if not rt.loaded:
            await anyio.to_thread.run_sync(rt.load)
        app.state.runtime = rt
        app.state.created = int(time.time())
        yield

    async def chat_completions(request: Request) -> Response:
        rt: LlamaRuntime = request.app.state.runtime
        chat = validate_chat_request(parse_json_body(await web.read_body(request, limit)))
        kwargs = completion_kwargs(chat, rt.model_id)
        if not chat.stream:
            cancel = threading.Event()
            try:
                return JSONResponse(
                    await web.unless_disconnected(request, lambda: rt.complete(kwargs, cancel), cancel.set)
                )
            except web.ClientDisconnected:
                return Response(status_code=web.CLIENT_CLOSED_REQUEST)
        include_usage = bool((chat.body.get("stream_options") or {}).get("include_usage"))
        chunks = rt.stream(kwargs)
        first = await anext(chunks)  # context-length errors surface here, before any byte is sent
        return web.ClosingStreamingResponse(
            _sse(first, chunks, include_usage), media_type="text/event-stream", headers=SSE_HEADERS
        )

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
            raise Overloaded("The model is still loading.", headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "model": rt.model_id, "n_ctx": rt.n_ctx, "load_seconds": rt.load_seconds})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ping", health, methods=["GET"]),  # the Lambda Web Adapter's readiness check
        ],
        middleware=web.middleware(),
        exception_handlers=web.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


async def _sse(
    first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], include_usage: bool
) -> AsyncIterator[bytes]:
    """Encode runtime chunks as SSE; the final usage chunk only when the client asked for it."""
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            if chunk.get("choices") or include_usage:
                yield sse_data(chunk)
            chunk = await anext(chunks, None)
    except Exception as exc:
        logger.exception("generation failed mid-stream")
        yield sse_data(error_body(f"generation failed: {exc}", "server_error", None, "generation_failed"))
        return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
