#!/bin/bash
# Lambda entry point of the router functions (Handler: run.sh). The Lambda Web Adapter
# (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this script, waits until the app answers its
# readiness path (AWS_LWA_READINESS_CHECK_PATH=/ping), then turns each invocation into an HTTP
# request to it. The r1edge layer is in /opt/python; this function's code in $LAMBDA_TASK_ROOT.
# --http: uvicorn's h11 protocol with time limits on clients (r1edge.protocol.server:
# R1EDGE_HEADER_TIMEOUT, and the keep-alive limit UVICORN_TIMEOUT_KEEP_ALIVE from the first byte).
PATH=$PATH:$LAMBDA_TASK_ROOT/bin \
PYTHONPATH=$PYTHONPATH:/opt/python:$LAMBDA_RUNTIME_DIR \
exec python -m uvicorn app:app --host 127.0.0.1 --port "${PORT:-8000}" --no-access-log \
    --http r1edge.protocol.server:BoundedH11Protocol
