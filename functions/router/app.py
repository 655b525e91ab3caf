"""Router function: the OpenAI-compatible entry point (ASGI app ``app``).

Served by uvicorn locally (``make run``, ``make run-router``) and by the Lambda Web Adapter in
AWS. All logic is in :mod:`r1edge.apps.router`; the routing config comes from ``R1EDGE_CONFIG``.
"""

from r1edge.apps.router import create_app

app = create_app()
