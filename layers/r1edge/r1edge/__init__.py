"""r1edge: the shared library of the r1edge functions (router, edge, config, worker, health).

The package is a house in rooms (docs/ARCHITECTURE.md): each subpackage holds one idea, and
imports go one way only, checked by import-linter (``make lint``):

- :mod:`r1edge.apps` — wiring: builds the apps and handlers from the environment; nothing imports it.
- :mod:`r1edge.jobs`, :mod:`r1edge.configfiles`, :mod:`r1edge.edge` — the queued-jobs service,
  the config-file service, the edge model server.
- :mod:`r1edge.access`, :mod:`r1edge.cache` — API keys, limits and usage; the response cache.
- :mod:`r1edge.observe` — metrics, the health prober and the health table's view.
- :mod:`r1edge.routing` — the routing config, the classifier, the gateway and its upstream client.
- :mod:`r1edge.resilience` — retry, circuit breaker, endpoint selection, engine load: pure policy.
- :mod:`r1edge.aws` — the one boto3 client factory, the DynamoDB table helper, the Lambda deadline.
- :mod:`r1edge.protocol` — the OpenAI wire protocol: validation, error shapes, the SSE codec.
- :mod:`r1edge.env`, :mod:`r1edge.headers` — environment-variable and header names.

The functions in ``functions/*/app.py`` stay thin and call into :mod:`r1edge.apps`.
"""

__version__ = "0.1.0"
