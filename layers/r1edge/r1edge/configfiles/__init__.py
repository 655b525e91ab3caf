"""The config-file service: ``GET``/``HEAD /v1/configs/{name}`` from S3 with strong ETags,
conditional requests (RFC 9110 §13) and CDN caching (RFC 9111), behind API Gateway, a Function URL
or CloudFront (Lambda@Edge).

Entry point: :func:`~r1edge.configfiles.api.serve`; the Lambda event shapes it is reached by
(API Gateway, Function URL, CloudFront) are dispatched by
:class:`~r1edge.configfiles.lambda_events.EventDispatcher`.
"""
