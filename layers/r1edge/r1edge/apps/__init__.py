"""Wiring: each app or handler built from the environment, and nothing else. Nothing in r1edge
imports this package (an import-linter contract); ``functions/*/app.py`` and ``infra/local`` do.

- :mod:`~r1edge.apps.router` — the router's ASGI app (:func:`create_app`).
- :mod:`~r1edge.apps.worker` — the worker's runner and SQS record handler.
"""
