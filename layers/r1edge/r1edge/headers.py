"""HTTP header names r1edge reads or writes, one constant each. Field names are case-insensitive
(RFC 9110 §5.1), and every lookup in r1edge is (Starlette's and httpx's ``Headers``, lower-cased
event headers); the case here is the case r1edge writes: RFC 9110's spelling for standard fields,
lower case for its own ``x-`` fields; names it only reads are lower case, as ASGI, HTTP/2 and
API Gateway's payload 2.0 carry them. What each header means: docs/ARCHITECTURE.md, "Contracts".
"""

# Standard fields r1edge writes (and may read)
RETRY_AFTER = "Retry-After"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
CACHE_CONTROL = "Cache-Control"
ETAG = "ETag"
LAST_MODIFIED = "Last-Modified"
AGE = "Age"
ALLOW = "Allow"
LOCATION = "Location"
AUTHORIZATION = "Authorization"
IDEMPOTENCY_KEY = "Idempotency-Key"
PREFERENCE_APPLIED = "Preference-Applied"
CONNECTION = "Connection"

# Fields r1edge only reads
PREFER = "prefer"
IF_NONE_MATCH = "if-none-match"
IF_MODIFIED_SINCE = "if-modified-since"
RETRY_AFTER_MS = "retry-after-ms"
X_API_KEY = "x-api-key"
X_AMZN_LAMBDA_CONTEXT = "x-amzn-lambda-context"
X_R1EDGE_ALLOW_DEGRADE = "x-r1edge-allow-degrade"

# r1edge's own fields, and the de-facto standard ones it writes (OpenAI's rate-limit headers, nginx's buffering switch)
X_REQUEST_ID = "x-request-id"
X_R1EDGE_ROUTE = "x-r1edge-route"
X_R1EDGE_UPSTREAM = "x-r1edge-upstream"
X_R1EDGE_REASON = "x-r1edge-reason"
X_R1EDGE_ATTEMPTS = "x-r1edge-attempts"
X_CACHE = "x-cache"
X_R1EDGE_CONFIDENCE = "x-r1edge-confidence"
X_R1EDGE_CONFIDENCE_TOKENS = "x-r1edge-confidence-tokens"
X_R1EDGE_CONFIDENCE_WINDOW = "x-r1edge-confidence-window"
X_R1EDGE_MAX_TOKENS_CLAMPED = "x-r1edge-max-tokens-clamped"
X_ACCEL_BUFFERING = "x-accel-buffering"
X_RATELIMIT_LIMIT_REQUESTS = "x-ratelimit-limit-requests"
X_RATELIMIT_REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
X_RATELIMIT_RESET_REQUESTS = "x-ratelimit-reset-requests"
X_RATELIMIT_LIMIT_TOKENS = "x-ratelimit-limit-tokens"
X_RATELIMIT_REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
X_RATELIMIT_RESET_TOKENS = "x-ratelimit-reset-tokens"
