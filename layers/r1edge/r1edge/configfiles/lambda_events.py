"""The config function's Lambda events, dispatched by shape to one ``serve`` callable.

:class:`EventDispatcher` takes API Gateway HTTP API events (payload format 2.0), REST API events
(payload 1.0) and Function URL events (payload 2.0 with a ``*.lambda-url.*`` domain), each through
its Powertools resolver, and CloudFront origin-request events (``Records[0].cf``) through
:mod:`r1edge.configfiles.cloudfront`, as Powertools has no resolver for them. A proxy event's body
is decoded and checked (:func:`r1edge.configfiles.apigw.event_body`) before any resolver reads it.

``serve`` is ``(method, raw_name, headers) -> ConfigResponse``
(:func:`r1edge.configfiles.api.serve` with the container's settings and store bound), raising
:class:`~r1edge.protocol.errors.OpenAIError` for errors, which become OpenAI-shaped JSON answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    LambdaFunctionUrlResolver,
    Response,
)
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from r1edge.configfiles import cloudfront
from r1edge.configfiles.api import ROUTE_PREFIX, ConfigResponse
from r1edge.configfiles.apigw import event_body
from r1edge.headers import CONTENT_TYPE
from r1edge.protocol.errors import NotFound, OpenAIError, quote

#: ``(method, raw_name, headers) -> ConfigResponse``; raises OpenAIError (see the module docstring).
Serve = Callable[[str, str, dict[str, str]], ConfigResponse]
#: Methods routed to :func:`r1edge.configfiles.api.serve`, which answers 405 to all but GET/HEAD.
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _body(raw: bytes) -> str | bytes:
    """Text as ``str``, so Powertools sends it as is (it would re-serialise JSON given bytes);
    anything else as ``bytes``, which Powertools base64-encodes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _error(exc: OpenAIError) -> Response:
    return Response(exc.status, "application/json", exc.body(), headers=exc.headers)


def _resolver(app: ApiGatewayResolver, serve: Serve) -> ApiGatewayResolver:
    """``app`` with the configs route (every method in :data:`METHODS`), OpenAI-shaped errors
    and a 404 for every other path."""

    @app.route(ROUTE_PREFIX + ".+", method=METHODS)
    def configs() -> Response:
        event = app.current_event
        answer = serve(event.http_method, event.path[len(ROUTE_PREFIX) :], dict(event.headers or {}))
        return Response(answer.status, None, _body(answer.body), headers=answer.headers)

    @app.exception_handler(OpenAIError)
    def openai_error(exc: OpenAIError) -> Response:
        return _error(exc)

    @app.not_found
    def not_found(exc: Exception) -> Response:
        return _error(NotFound(f"No route for {quote(app.current_event.path)}; configs are under {ROUTE_PREFIX}."))

    return app


def _proxy_error(exc: OpenAIError) -> dict[str, Any]:
    """A proxy-integration result (payload 2.0 or 1.0 shape alike) for an error found before routing."""
    return {
        "statusCode": exc.status,
        "headers": {CONTENT_TYPE: "application/json", **exc.headers},
        "body": json.dumps(exc.body()),
        "isBase64Encoded": False,
    }


class EventDispatcher:
    """Answers one Lambda event of any supported shape (see the module docstring).

    Args:
        serve: answers a request for a config file (see :data:`Serve`).
    """

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.http_api = _resolver(APIGatewayHttpResolver(), serve)
        self.rest_api = _resolver(APIGatewayRestResolver(), serve)
        self.function_url = _resolver(LambdaFunctionUrlResolver(), serve)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """CloudFront ``Records[0].cf`` (a generated response in CloudFront's shape, or the
        request to forward), payload 2.0 (a Function URL when its ``domainName`` is a
        ``lambda-url`` one, else HTTP API), or REST API 1.0 (a proxy-integration result: a body
        that is bad base64 or not UTF-8 is a 400, one over 1 MiB decoded a 413).

        Raises:
            ValueError: the event is none of these shapes.
        """
        records = event.get("Records")
        if records and isinstance(records, list) and "cf" in records[0]:
            return cloudfront.handle_origin_request(event, self.serve)
        try:
            body = event_body(event)  # base64 decoded, size-checked and UTF-8 before anything reads it
        except OpenAIError as exc:
            return _proxy_error(exc)
        if event.get("body") is not None:
            event = {**event, "body": body, "isBase64Encoded": False}
        if event.get("version") == "2.0":
            domain = str((event.get("requestContext") or {}).get("domainName", ""))
            app = self.function_url if ".lambda-url." in domain else self.http_api
            return app.resolve(event, context)
        if "httpMethod" in event:
            return self.rest_api.resolve(event, context)
        raise ValueError("unsupported event: expected API Gateway, Function URL or CloudFront origin-request")
