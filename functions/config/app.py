"""Config function: ``GET``/``HEAD /v1/configs/{name}`` from S3 with ETags, conditional requests
and CDN caching (all logic in :mod:`r1edge.configfiles.api`).

``lambda_handler`` takes API Gateway HTTP API (payload 2.0) and REST API (1.0) events, Function
URL events (Powertools resolvers), and CloudFront origin-request events (:mod:`r1edge.configfiles.cloudfront`;
Powertools has no resolver for them). Environment: see :mod:`r1edge.configfiles.api`; the Lambda@Edge
variant (``edge_handler``) reads ``edge-settings.json`` bundled beside this file instead.
"""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    LambdaFunctionUrlResolver,
    Response,
)
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from r1edge.configfiles import cloudfront
from r1edge.configfiles.api import ROUTE_PREFIX, ConfigResponse, ConfigSettings, serve, store_from_settings
from r1edge.configfiles.apigw import event_body
from r1edge.configfiles.store import ConfigStore
from r1edge.observe import metrics
from r1edge.protocol.errors import NotFound, OpenAIError

logger = Logger(service="r1edge-config")
recorder = metrics.default("config")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@cache
def _service(edge: bool = False) -> tuple[ConfigSettings, ConfigStore]:
    """Settings and store, built once per container (boto3 client on first use)."""
    if edge:
        settings = cloudfront.load_settings(Path(__file__).with_name(cloudfront.SETTINGS_FILE))
    else:
        settings = ConfigSettings.from_env()
    return settings, store_from_settings(settings)


def _answer(edge: bool, method: str, raw_name: str, headers: dict[str, str]) -> ConfigResponse:
    settings, store = _service(edge)
    return serve(store, settings, method, raw_name, headers)


def _body(raw: bytes) -> str | bytes:
    """Text as ``str``, so Powertools sends it as is (it would re-serialise JSON given bytes);
    anything else as ``bytes``, which Powertools base64-encodes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _error(exc: OpenAIError) -> Response:
    return Response(exc.status, "application/json", exc.body(), headers=exc.headers)


def _resolver(app: ApiGatewayResolver) -> ApiGatewayResolver:
    @app.route(ROUTE_PREFIX + ".+", method=METHODS)
    def configs() -> Response:
        event = app.current_event
        answer = _answer(False, event.http_method, event.path[len(ROUTE_PREFIX) :], dict(event.headers or {}))
        return Response(answer.status, None, _body(answer.body), headers=answer.headers)

    @app.exception_handler(OpenAIError)
    def openai_error(exc: OpenAIError) -> Response:
        return _error(exc)

    @app.not_found
    def not_found(exc: Exception) -> Response:
        return _error(NotFound(f"No route for {app.current_event.path}; configs are under {ROUTE_PREFIX}."))

    return app


http_api = _resolver(APIGatewayHttpResolver())
rest_api = _resolver(APIGatewayRestResolver())
function_url = _resolver(LambdaFunctionUrlResolver())


def _proxy_error(event: dict[str, Any], exc: OpenAIError) -> dict[str, Any]:
    """A proxy-integration result (payload 2.0 or 1.0 shape alike) for an error found before routing."""
    return {
        "statusCode": exc.status,
        "headers": {"Content-Type": "application/json", **exc.headers},
        "body": json.dumps(exc.body()),
        "isBase64Encoded": False,
    }


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Dispatch by event shape (see :func:`_dispatch`); each answer is counted in the
    ``Requests`` metric (route ``/v1/configs/{name}``, its status) and flushed as EMF."""
    started = time.monotonic()
    status = 500
    try:
        result = _dispatch(event, context)
        status = int(result.get("statusCode") or result.get("status") or 200)
        return result
    finally:
        recorder.request(ROUTE_PREFIX + "{name}", metrics.NONE, metrics.NONE, status, time.monotonic() - started)
        recorder.flush()


def _dispatch(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """CloudFront ``Records[0].cf``, payload 2.0 (a Function URL when its ``domainName`` is a
    ``lambda-url`` one, else HTTP API), or REST API 1.0."""
    records = event.get("Records")
    if records and isinstance(records, list) and "cf" in records[0]:
        return cloudfront.handle_origin_request(event, lambda m, n, h: _answer(False, m, n, h))
    try:
        body = event_body(event)  # base64 decoded, size-checked and UTF-8 before anything reads it
    except OpenAIError as exc:
        return _proxy_error(event, exc)
    if event.get("body") is not None:
        event = {**event, "body": body, "isBase64Encoded": False}
    if event.get("version") == "2.0":
        domain = str((event.get("requestContext") or {}).get("domainName", ""))
        app = function_url if ".lambda-url." in domain else http_api
        return app.resolve(event, context)
    if "httpMethod" in event:
        return rest_api.resolve(event, context)
    raise ValueError("unsupported event: expected API Gateway, Function URL or CloudFront origin-request")


def edge_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda@Edge origin-request trigger (settings from the bundled ``edge-settings.json``)."""
    return cloudfront.handle_origin_request(event, lambda m, n, h: _answer(True, m, n, h))
