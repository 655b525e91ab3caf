"""Config function: ``GET``/``HEAD /v1/configs/{name}`` from S3 with ETags, conditional requests
and CDN caching. ``lambda_handler`` takes API Gateway (HTTP and REST API), Function URL and
CloudFront origin-request events; ``edge_handler`` is the Lambda@Edge variant, whose settings are
the ``edge-settings.json`` bundled beside this file. All logic is in :mod:`r1edge.apps.config`.
"""

from pathlib import Path

from r1edge.apps.config import ConfigFunction

function = ConfigFunction(Path(__file__).parent)
_service = function.service  # settings and store, built once per container
lambda_handler = function.lambda_handler
edge_handler = function.edge_handler
