"""Access: API keys, per-key rate limits (GCRA in DynamoDB), usage records, the auth middleware
and the key CLI (``python -m r1edge.access.keys``).

Entry point: :class:`~r1edge.access.middleware.Guard` (built from the environment by the wiring).
"""
