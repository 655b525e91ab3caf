"""The config-file service: ``GET``/``HEAD /v1/configs/{name}`` from S3 with strong ETags,
conditional requests (RFC 9110 §13) and CDN caching (RFC 9111), behind API Gateway, a Function URL
or CloudFront (Lambda@Edge).

Entry point: :func:`~r1edge.configfiles.api.serve`.
"""
