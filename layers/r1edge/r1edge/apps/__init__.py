"""Wiring: each app or handler built from the environment, and nothing else. Nothing in r1edge
imports this package (an import-linter contract); ``functions/*/app.py`` and ``infra/local`` do.

- :mod:`~r1edge.apps.router` — the router's ASGI app (:func:`create_app`).
- :mod:`~r1edge.apps.worker` — the worker's runner, its SQS record handler and ``lambda_handler``.
- :mod:`~r1edge.apps.config` — the config function's handlers (API Gateway, Function URL,
  CloudFront and Lambda@Edge).
- :mod:`~r1edge.apps.health` — the scheduled health function's handler.
"""
