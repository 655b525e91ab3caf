"""The config function's wiring (functions/config/app.py): settings and store built once per
container, every Lambda event shape dispatched by :class:`r1edge.configfiles.lambda_events.EventDispatcher`,
and each answer counted in the ``Requests`` metric and flushed as EMF.

Two handlers: ``lambda_handler`` reads its settings from the environment
(:meth:`r1edge.configfiles.api.ConfigSettings.from_env`); ``edge_handler``, the Lambda@Edge
origin-request variant, has no environment and reads ``edge-settings.json``
(:data:`r1edge.configfiles.cloudfront.SETTINGS_FILE`) bundled beside the function's code.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

from r1edge.configfiles import cloudfront
from r1edge.configfiles.api import ROUTE_PREFIX, ConfigResponse, ConfigSettings, serve, store_from_settings
from r1edge.configfiles.lambda_events import EventDispatcher
from r1edge.configfiles.store import ConfigStore
from r1edge.observe import metrics

logger = Logger(service="r1edge-config")
#: The ``route`` label of every answer's ``Requests`` metric.
ROUTE = ROUTE_PREFIX + "{name}"


class ConfigFunction:
    """The config function's handlers and per-container state.

    Args:
        code_dir: the directory of the function's code, where the Lambda@Edge variant finds its
            bundled ``edge-settings.json``.
        recorder: where answers are counted (default: the process's ``config`` recorder).

    Attributes:
        service: ``(edge: bool = False) -> (settings, store)``, built on first use and cached
            (``service.cache_clear()`` forgets them); the store's S3 client is made on first use.
        lambda_handler: ``(event, context) -> result``, see :meth:`handle`; logs carry the
            Lambda context (Powertools ``inject_lambda_context``).
    """

    def __init__(self, code_dir: Path, recorder: metrics.Recorder | None = None) -> None:
        self.code_dir = code_dir
        self.recorder = recorder or metrics.default("config")
        self.service = cache(self._build)
        self.dispatch = EventDispatcher(lambda method, name, headers: self.answer(False, method, name, headers))
        self.lambda_handler = logger.inject_lambda_context(self.handle)

    def _build(self, edge: bool = False) -> tuple[ConfigSettings, ConfigStore]:
        """Settings and store. Raises ConfigError: settings missing or malformed."""
        if edge:
            settings = cloudfront.load_settings(self.code_dir / cloudfront.SETTINGS_FILE)
        else:
            settings = ConfigSettings.from_env()
        return settings, store_from_settings(settings)

    def answer(self, edge: bool, method: str, raw_name: str, headers: dict[str, str]) -> ConfigResponse:
        """:func:`r1edge.configfiles.api.serve` on the container's settings and store (the
        bundled ones when ``edge``). Raises OpenAIError for error answers."""
        settings, store = self.service(edge)
        return serve(store, settings, method, raw_name, headers)

    def handle(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Answer one event of any shape (:class:`EventDispatcher`); the answer is counted in the
        ``Requests`` metric (route ``/v1/configs/{name}``, its status; 500 when the dispatch
        raised) with its time in seconds, and the metrics are flushed as EMF.

        Raises:
            ValueError: an event of no supported shape.
        """
        started = time.monotonic()
        status = 500
        try:
            result = self.dispatch(event, context)
            status = int(result.get("statusCode") or result.get("status") or 200)
            return result
        finally:
            self.recorder.request(ROUTE, metrics.NONE, metrics.NONE, status, time.monotonic() - started)
            self.recorder.flush()

    def edge_handler(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Lambda@Edge origin-request trigger (settings from the bundled ``edge-settings.json``);
        not counted in metrics. See :func:`r1edge.configfiles.cloudfront.handle_origin_request`."""
        return cloudfront.handle_origin_request(event, lambda method, name, hdrs: self.answer(True, method, name, hdrs))
