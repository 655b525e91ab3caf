"""AWS adapters: the one boto3 client factory (:mod:`~r1edge.aws.clients`), the DynamoDB table
helper every store uses (:mod:`~r1edge.aws.ddb`), and the Lambda deadline
(:mod:`~r1edge.aws.lambda_context`).

Nothing here holds domain logic; everything is created lazily, never at import time.
"""
