"""The router as ``make run`` serves it: the router app, plus ``/v1/configs/*`` answered by the
config function's own ``lambda_handler`` (functions/config/app.py), called with API Gateway HTTP
API events built from each request (:mod:`r1edge.configfiles.apigw`), the way API Gateway would call it.

The configs route is there when ``CONFIG_BUCKET`` is set (``make run`` points it at the moto
server it starts, through ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from r1edge.apps.router import create_app
from r1edge.configfiles.apigw import http_api_event, http_response

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: What Powertools' Logger reads from a Lambda context.
CONTEXT = SimpleNamespace(
    function_name="r1edge-config-local",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:000000000000:function:r1edge-config-local",
    aws_request_id="local",
)


def _config_function() -> Any:
    spec = importlib.util.spec_from_file_location("config_function", ROOT / "functions" / "config" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_route() -> Route:
    """``/v1/configs/{name}`` through the config function's handler."""
    handler = _config_function().lambda_handler

    async def configs(request: Request) -> Response:
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        event = http_api_event(
            request.method,
            raw_path.split("?", 1)[0],
            request.url.query,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            await request.body(),
            domain=request.url.hostname or "localhost",
        )
        status, headers, body = http_response(await anyio.to_thread.run_sync(handler, event, CONTEXT))
        return Response(body, status_code=status, headers=headers)

    return Route("/v1/configs/{name:path}", configs, methods=METHODS)


app = create_app(extra_routes=[config_route()] if os.environ.get("CONFIG_BUCKET") else [])
