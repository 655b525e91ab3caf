"""Run the r1edge stack on one machine, in the foreground.

    python infra/local/run.py [--port 8000] [--config FILE] [--router-only]

Full stack (``make run``): the edge model server (``functions/edge``, the packaged SmolLM2 with a
2048-token context) and a cluster stand-in — the third-party ``python -m llama_cpp.server``
serving the same GGUF file with ``n_ctx`` 8192 — each on a free port, and the router on
``127.0.0.1:PORT`` with a generated routing config that wires them together. A local S3 (a moto
server) holds the config bucket, seeded from ``infra/local/configs/`` and the generated routing
config, and the router's port also serves ``/v1/configs/*`` through the config function's
handler (``infra/local/localapp.py``). The same moto server is the local DynamoDB: it holds the
response cache's L2 table (:func:`create_cache_table`) among the others; the router's L1 cache starts empty in the
run's temporary directory unless ``R1EDGE_CACHE_DIR`` names one. ``R1EDGE_CONFIG`` (or
``--config``) replaces the generated config, and then only the router starts.

The health function's prober (``infra/local/prober.py``) probes the endpoints every 30 s into a
``r1edge-health`` table in the same moto server (created from the template's ``HealthTable``),
which the router reads.

Router only (``make run-router``): just the router, against the endpoints of ``--config``.

API keys are always on: a moto server (the local S3 one, or one of its own in router-only mode)
holds the keys, limits and usage tables and the HMAC secret, and one development key (tenant
``dev``, 600 requests and 1,000,000 tokens per minute) is created and printed as a line
``R1EDGE_API_KEY=<key>`` just before the ready line; when ``R1EDGE_API_KEY`` is set in the
environment, that value is the development key.

Readiness is polled, never slept for: each part's health URL until it answers 200, then the
router's ``/health``, which is 200 once every endpoint answers (router only: its ``/ping``, so a
config naming an endpoint that is down still starts). SIGINT or SIGTERM stops every
process this script started within 2 seconds (SIGTERM first, SIGKILL after 1.5 s); children
stay in the caller's process group, so ``make``'s Ctrl-C reaches them too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from r1edge.edge.model import resolve_model_path
from r1edge.protocol.server import HTTP_PROTOCOL
from r1edge.routing.config import dump_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

EDGE_N_CTX = 2048
CLUSTER_N_CTX = 8192  # SmolLM2's trained context
STOP_GRACE_SECONDS = 1.5
READY_TIMEOUT_SECONDS = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[r1edge] {message}", flush=True)


class Stack:
    """The processes of the local stack; :meth:`stop` ends every one of them."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], quiet: bool = False) -> None:
        """Start a process; ``quiet`` sends its output to /dev/null (moto logs every request)."""
        output = subprocess.DEVNULL if quiet else None
        self.procs.append((name, subprocess.Popen(argv, env=env, cwd=ROOT, stdout=output, stderr=output)))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}")

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(stack: Stack, name: str, url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll ``url`` until it answers 200; fail early if a process of the stack died."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f} s ({last})")


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # llama_cpp.server reads PORT, HOST and CONFIG_FILE from the environment over its flags, and
    # make exports PORT (the router's): children get their ports from their flags only.
    for name in ("PORT", "HOST", "CONFIG_FILE"):
        env.pop(name, None)
    env.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    # EMF lines are for CloudWatch; locally the router's GET /metrics shows the same metrics.
    env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    env.update(extra)
    return env


def uvicorn_argv(function: str, host: str, port: int, app_dir: Path | None = None) -> list[str]:
    """The uvicorn command line of the router (``function`` ``router``, or ``localapp`` with its
    ``app_dir``) and the edge (``edge``): h11 with the time limits on clients of
    :mod:`r1edge.protocol.server` (``R1EDGE_HEADER_TIMEOUT``; the keep-alive limit from
    ``UVICORN_TIMEOUT_KEEP_ALIVE``, which uvicorn reads itself), as functions/router/run.sh and
    the edge's Dockerfile start them."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"{function}:app" if app_dir else "app:app",
        "--app-dir",
        str(app_dir or ROOT / "functions" / function),
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--http",
        HTTP_PROTOCOL,
        "--timeout-graceful-shutdown",
        "1",
    ]


CONFIG_BUCKET = "r1edge-configs"
CONFIG_PREFIX = "configs/"
SEED = Path(__file__).resolve().parent / "configs"
#: ``python -m moto.server`` without its per-request access log (werkzeug's, at INFO): the router
#: reads the response cache's table on every cacheable request.
MOTO_QUIET = (
    "import logging, sys; logging.getLogger('werkzeug').setLevel(logging.WARNING); "
    "from moto.server import main; sys.argv[0] = 'moto.server'; main()"
)
#: Credentials for the local moto server (it accepts any).
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_session():  # -> boto3.Session
    """A boto3 session with the local moto server's credentials and region (:data:`MOTO_ENV`);
    its clients take the server's URL as ``endpoint_url``."""
    import boto3

    return boto3.Session(
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def seed_configs(endpoint: str, routing: str) -> int:
    """Create the config bucket in the local S3 and upload ``infra/local/configs/`` under
    ``configs/``, plus the generated routing config as ``configs/routing.json``; return how many
    files were uploaded."""
    s3 = moto_session().client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=CONFIG_BUCKET)
    files = sorted(p for p in SEED.rglob("*") if p.is_file())
    for path in files:
        s3.put_object(
            Bucket=CONFIG_BUCKET, Key=CONFIG_PREFIX + path.relative_to(SEED).as_posix(), Body=path.read_bytes()
        )
    s3.put_object(Bucket=CONFIG_BUCKET, Key=CONFIG_PREFIX + "routing.json", Body=routing.encode())
    return len(files) + 1


HEALTH_TABLE = "r1edge-health"
#: Seconds between the local health prober's rounds (the health function's ``health.interval``).
HEALTH_INTERVAL = 30.0


def template_table(logical_id: str) -> dict[str, object]:
    """``CreateTable`` arguments from a DynamoDB table in ``template.yaml`` (key schema, attribute
    definitions, billing mode), so the local stack and the tests cannot drift from the template."""
    from cfnlint.decode import cfn_yaml

    props = cfn_yaml.load(str(ROOT / "template.yaml"))["Resources"][logical_id]["Properties"]
    return {
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props["BillingMode"],
    }


def create_health_table(client: object, name: str = HEALTH_TABLE) -> str:
    """Create the health table (the template's ``HealthTable``, with its TTL) with a boto3
    DynamoDB client, and return its name. Other local tables are created the same way."""
    client.create_table(TableName=name, **template_table("HealthTable"))  # type: ignore[attr-defined]
    client.update_time_to_live(  # type: ignore[attr-defined]
        TableName=name, TimeToLiveSpecification={"AttributeName": "expires_at", "Enabled": True}
    )
    return name


def create_tables(endpoint: str) -> dict[str, str]:
    """Create the local stack's DynamoDB tables in the moto server at ``endpoint``; return the
    environment variables that name them (for the router and the prober)."""
    client = moto_session().client("dynamodb", endpoint_url=endpoint)
    return {"R1EDGE_HEALTH_TABLE": create_health_table(client), "R1EDGE_CACHE_TABLE": create_cache_table(client)}


#: The L2 response cache table in the local DynamoDB (the routing config's default ``cache.table``).
CACHE_TABLE = "r1edge-cache"


def create_cache_table(client: object, name: str = CACHE_TABLE) -> str:
    """Create the response cache's L2 table (the template's ``ResponseCacheTable``: partition key
    ``key``, TTL on ``expires_at``) with a boto3 DynamoDB client, and return its name."""
    client.create_table(TableName=name, **template_table("ResponseCacheTable"))  # type: ignore[attr-defined]
    client.update_time_to_live(  # type: ignore[attr-defined]
        TableName=name, TimeToLiveSpecification={"AttributeName": "expires_at", "Enabled": True}
    )
    return name


KEYS_TABLE, LIMITS_TABLE, USAGE_TABLE = "r1edge-keys", "r1edge-limits", "r1edge-usage"
KEYS_SECRET = "r1edge/api-key-hmac"
#: The development key's tenant and limits (requests and tokens per minute).
DEV_TENANT, DEV_RPM, DEV_TPM = "dev", 600, 1_000_000


def setup_api_keys(endpoint: str, dev_key: str | None) -> tuple[dict[str, str], str]:
    """Create the keys, limits and usage tables and the HMAC secret (a new random value) in the
    local moto server at ``endpoint``, and the development key (tenant ``dev``, :data:`DEV_RPM`
    requests and :data:`DEV_TPM` tokens per minute): ``dev_key`` verbatim when given, else a new
    one. Return the router's environment for them and the key."""
    import secrets

    from r1edge.access.keys import KEYS_TABLE_SCHEMA, DynamoKeyStore, create_key
    from r1edge.access.ratelimit import LIMITS_TABLE_SCHEMA
    from r1edge.access.usage import USAGE_TABLE_SCHEMA

    session = moto_session()
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    for name, schema in (
        (KEYS_TABLE, KEYS_TABLE_SCHEMA),
        (LIMITS_TABLE, LIMITS_TABLE_SCHEMA),
        (USAGE_TABLE, USAGE_TABLE_SCHEMA),
    ):
        dynamodb.create_table(TableName=name, **schema)
    hmac_secret = secrets.token_urlsafe(48)
    session.client("secretsmanager", endpoint_url=endpoint).create_secret(Name=KEYS_SECRET, SecretString=hmac_secret)
    store = DynamoKeyStore(KEYS_TABLE, dynamodb)
    key, _ = create_key(store, hmac_secret, DEV_TENANT, DEV_RPM, DEV_TPM, key=dev_key or None)
    env = {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
        "R1EDGE_KEYS_TABLE": KEYS_TABLE,
        "R1EDGE_KEYS_SECRET": KEYS_SECRET,
        "R1EDGE_LIMITS_TABLE": LIMITS_TABLE,
        "R1EDGE_USAGE_TABLE": USAGE_TABLE,
    }
    return env, key


#: Names of the local job queue, dead-letter queue, tables and bucket (template.yaml: JobQueue,
#: JobDeadLetterQueue, JobsTable, IdempotencyTable, JobsBucket).
JOBS_QUEUE = "r1edge-jobs"
JOBS_DLQ = "r1edge-jobs-dlq"
JOBS_TABLE = "r1edge-jobs"
IDEMPOTENCY_TABLE = "r1edge-idempotency"
JOBS_BUCKET = "r1edge-jobs"
#: Job queue attributes, as template.yaml sets them (tests/unit/test_jobs_worker.py compares).
JOBS_QUEUE_ATTRIBUTES = {
    "VisibilityTimeout": "5400",
    "MaximumMessageSize": "262144",
    "MessageRetentionPeriod": "1209600",
}
JOBS_MAX_RECEIVE_COUNT = 5


def create_local_aws_resources(endpoint: str | None, visibility_timeout: int | None = None) -> dict[str, str]:
    """Create in the local AWS (moto server at ``endpoint``; ``None``: boto3's default, e.g. under
    ``moto.mock_aws``) the resources template.yaml defines besides the config bucket: the job
    queue and its dead-letter queue (redrive after :data:`JOBS_MAX_RECEIVE_COUNT` receives), the
    jobs and idempotency tables (partition key ``id``, TTL on) and the jobs bucket.

    Args:
        endpoint: the moto server's URL, or ``None``.
        visibility_timeout: seconds, overriding the queue's 5,400 (benchmarks use a short one so
            a crashed worker's messages reappear quickly).

    Returns:
        The ``JOBS_*``/``IDEMPOTENCY_TABLE`` environment variables that point the router and
        the worker at them.
    """
    session = moto_session()
    sqs, dynamodb, s3 = (session.client(name, endpoint_url=endpoint) for name in ("sqs", "dynamodb", "s3"))
    dlq_url = sqs.create_queue(QueueName=JOBS_DLQ, Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = dict(JOBS_QUEUE_ATTRIBUTES)
    if visibility_timeout is not None:
        attributes["VisibilityTimeout"] = str(visibility_timeout)
    attributes["RedrivePolicy"] = json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": JOBS_MAX_RECEIVE_COUNT}
    )
    queue_url = sqs.create_queue(QueueName=JOBS_QUEUE, Attributes=attributes)["QueueUrl"]
    for table, ttl in ((JOBS_TABLE, "expires_at"), (IDEMPOTENCY_TABLE, "expiration")):
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl})
    s3.create_bucket(Bucket=JOBS_BUCKET)
    return {
        "JOBS_QUEUE_URL": queue_url,
        "JOBS_TABLE": JOBS_TABLE,
        "IDEMPOTENCY_TABLE": IDEMPOTENCY_TABLE,
        "JOBS_BUCKET": JOBS_BUCKET,
    }


def generated_config(edge_port: int, cluster_port: int) -> str:
    """The routing config for the full local stack (docs/ARCHITECTURE.md format), as JSON text."""
    config = parse_config(
        {
            "endpoints": [
                {"name": "edge-local", "url": f"http://127.0.0.1:{edge_port}/v1", "tier": "edge"},
                {"name": "cluster-local", "url": f"http://127.0.0.1:{cluster_port}/v1", "tier": "cluster"},
            ],
            "classifier": {"edge_context_tokens": EDGE_N_CTX},
        }
    )
    return dump_config(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument(
        "--config",
        default=os.environ.get("CONFIG") or os.environ.get("R1EDGE_CONFIG") or None,
        help="routing config file or s3://bucket/key (default: generated for the local stack)",
    )
    parser.add_argument("--router-only", action="store_true", help="start only the router (needs --config)")
    args = parser.parse_args(argv)
    if args.router_only and not args.config:
        parser.error("--router-only needs a routing config: CONFIG=file or R1EDGE_CONFIG=file")

    stack = Stack()

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = tempfile.TemporaryDirectory(prefix="r1edge-")
    try:
        config_source = args.config
        router_env: dict[str, str] = {}
        aws_url: str | None = None
        router_app = ("router", None)
        if config_source is None:
            model = resolve_model_path()
            edge_port, cluster_port = free_port(), free_port()
            log(f"model {model}")
            stack.start(
                "edge",
                uvicorn_argv("edge", "127.0.0.1", edge_port),
                child_env(MODEL_PATH=str(model), EDGE_N_CTX=str(EDGE_N_CTX)),
            )
            stack.start(
                "cluster stand-in",
                [
                    sys.executable,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(model),
                    "--model_alias",
                    "deepseek-r1",
                    "--n_ctx",
                    str(CLUSTER_N_CTX),
                    "--logits_all",
                    "false",
                    # the default ends a running stream with [DONE] when another request (a health
                    # probe's GET /v1/models, say) arrives: see the README's decisions log
                    "--interrupt_requests",
                    "false",
                    "--verbose",
                    "false",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(cluster_port),
                ],
                child_env(),
            )
            s3_port = free_port()
            stack.start(
                "local S3 (moto)",
                [sys.executable, "-c", MOTO_QUIET, "-H", "127.0.0.1", "-p", str(s3_port)],
                child_env(**MOTO_ENV),
                quiet=True,
            )
            config_path = Path(workdir.name) / "routing.json"
            config_path.write_text(generated_config(edge_port, cluster_port))
            config_source = str(config_path)
            s3_url = f"http://127.0.0.1:{s3_port}"
            wait_ready(stack, "local S3 (moto)", f"{s3_url}/moto-api/")
            seed_configs(s3_url, config_path.read_text())
            tables = create_tables(s3_url)
            log(f"local S3 (moto)     {s3_url}   (bucket {CONFIG_BUCKET}: infra/local/configs/ and routing.json)")
            log(f"local DynamoDB      {s3_url}   (tables {', '.join(sorted(tables.values()))})")
            jobs_env = create_local_aws_resources(s3_url)
            log(
                f"local SQS/DynamoDB  {s3_url}   (queue {JOBS_QUEUE}, DLQ {JOBS_DLQ}, tables {JOBS_TABLE}, "
                f"{IDEMPOTENCY_TABLE})"
            )
            router_env = {
                **MOTO_ENV,
                **tables,
                **jobs_env,
                "AWS_ENDPOINT_URL_S3": s3_url,  # S3, SQS, DynamoDB: only endpoint URLs differ from AWS
                "AWS_ENDPOINT_URL_SQS": s3_url,
                "AWS_ENDPOINT_URL_DYNAMODB": s3_url,
                "R1EDGE_CACHE_L2": "true",
                "CONFIG_BUCKET": CONFIG_BUCKET,
                "CONFIG_PREFIX": CONFIG_PREFIX,
                "CONFIG_CACHE_DIR": str(Path(workdir.name) / "configs-cache"),
            }
            router_app = ("localapp", Path(__file__).resolve().parent)
            aws_url = s3_url
            wait_ready(stack, "edge", f"http://127.0.0.1:{edge_port}/health")
            log(f"edge model server   http://127.0.0.1:{edge_port}/v1   (n_ctx {EDGE_N_CTX})")
            wait_ready(stack, "cluster stand-in", f"http://127.0.0.1:{cluster_port}/v1/models")
            log(f"cluster stand-in    http://127.0.0.1:{cluster_port}/v1   (llama_cpp.server, n_ctx {CLUSTER_N_CTX})")
            stack.start(
                "health prober",
                [
                    sys.executable,
                    str(Path(__file__).resolve().parent / "prober.py"),
                    "--interval",
                    str(HEALTH_INTERVAL),
                ],
                child_env(R1EDGE_CONFIG=config_source, **router_env),
            )
            log(f"health prober       every {HEALTH_INTERVAL:g} s into table {tables['R1EDGE_HEALTH_TABLE']}")
        if aws_url is None:  # router only: a moto server for the API keys
            aws_port = free_port()
            stack.start(
                "local AWS (moto)",
                [sys.executable, "-c", MOTO_QUIET, "-H", "127.0.0.1", "-p", str(aws_port)],
                child_env(**MOTO_ENV),
                quiet=True,
            )
            aws_url = f"http://127.0.0.1:{aws_port}"
            wait_ready(stack, "local AWS (moto)", f"{aws_url}/moto-api/")
            if not any(os.environ.get(v) for v in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")):
                router_env.update(MOTO_ENV)  # moto takes any credentials; boto3 needs some
            if not any(os.environ.get(v) for v in ("AWS_REGION", "AWS_DEFAULT_REGION")):
                router_env["AWS_DEFAULT_REGION"] = MOTO_ENV["AWS_DEFAULT_REGION"]  # and a region
        keys_env, dev_key = setup_api_keys(aws_url, os.environ.get("R1EDGE_API_KEY"))
        router_env.update(keys_env)
        log(
            f"API keys            DynamoDB {KEYS_TABLE} at {aws_url}; development key: tenant {DEV_TENANT}, "
            f"{DEV_RPM} requests/min, {DEV_TPM} tokens/min"
        )
        log(
            f"manage keys:        {' '.join(f'{k}={v}' for k, v in MOTO_ENV.items())} "
            f"AWS_ENDPOINT_URL_DYNAMODB={aws_url} AWS_ENDPOINT_URL_SECRETS_MANAGER={aws_url} "
            f"R1EDGE_KEYS_TABLE={KEYS_TABLE} R1EDGE_KEYS_SECRET={KEYS_SECRET} make keys ARGS=list"
        )
        # Each run starts with an empty L1 response cache unless R1EDGE_CACHE_DIR names one.
        router_env.setdefault(
            "R1EDGE_CACHE_DIR", os.environ.get("R1EDGE_CACHE_DIR") or str(Path(workdir.name) / "cache")
        )
        stack.start(
            "router",
            uvicorn_argv(router_app[0], args.host, args.port, router_app[1]),
            child_env(R1EDGE_CONFIG=config_source, **router_env),
        )
        if "JOBS_QUEUE_URL" in router_env:
            # The worker function's handler, fed SQS events by a polling loop (infra/local/worker.py).
            worker_argv = [sys.executable, str(Path(__file__).resolve().parent / "worker.py")]
            stack.start("job worker", worker_argv, child_env(R1EDGE_CONFIG=config_source, **router_env))
        if args.router_only:
            # Only the router is ours: ready once it is up; /health reports the endpoints' state.
            wait_ready(stack, "router", f"http://127.0.0.1:{args.port}/ping")
        else:
            wait_ready(stack, "router", f"http://127.0.0.1:{args.port}/health")
        log(f"router              http://{args.host}:{args.port}/v1   (config {config_source})")
        if args.router_only:
            log(f"ready: the router is up; GET http://{args.host}:{args.port}/health checks its endpoints.")
        else:
            log(f"ready: GET http://{args.host}:{args.port}/health is 200. Ctrl-C stops everything.")
        print(f"R1EDGE_API_KEY={dev_key}", flush=True)
        print(json.dumps({"ready": True, "router": f"http://{args.host}:{args.port}/v1"}), flush=True)
        while True:
            stack.check_alive()
            time.sleep(0.2)
    except KeyboardInterrupt:
        log("stopping")
        return 0
    except Exception as exc:  # noqa: BLE001 - report any start-up failure plainly, then clean up
        log(f"error: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        workdir.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
