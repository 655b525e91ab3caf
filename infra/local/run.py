"""Run the r1edge stack on one machine, in the foreground.

    python infra/local/run.py [--port 8000] [--config FILE] [--router-only]

Full stack (``make run``): the edge model server (``functions/edge``, the packaged SmolLM2 with a
2048-token context) and a cluster stand-in — the third-party ``python -m llama_cpp.server``
serving the same GGUF file with ``n_ctx`` 8192 — each on a free port, and the router on
``127.0.0.1:PORT`` with a generated routing config that wires them together. A local S3 (a moto
server) holds the config bucket, seeded from ``infra/local/configs/`` and the generated routing
config, and the router's port also serves ``/v1/configs/*`` through the config function's
handler (``infra/local/localapp.py``). ``R1EDGE_CONFIG`` (or ``--config``) replaces the
generated config, and then only the router starts.

The health function's prober (``infra/local/prober.py``) probes the endpoints every 30 s into a
``r1edge-health`` table in the same moto server (created from the template's ``HealthTable``),
which the router reads.

Router only (``make run-router``): just the router, against the endpoints of ``--config``.

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

from r1edge.config import dump_config, parse_config
from r1edge.model import resolve_model_path

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

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.procs.append((name, subprocess.Popen(argv, env=env, cwd=ROOT)))

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
        "--timeout-graceful-shutdown",
        "1",
    ]


CONFIG_BUCKET = "r1edge-configs"
CONFIG_PREFIX = "configs/"
SEED = Path(__file__).resolve().parent / "configs"
#: Credentials for the local moto server (it accepts any).
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def seed_configs(endpoint: str, routing: str) -> int:
    """Create the config bucket in the local S3 and upload ``infra/local/configs/`` under
    ``configs/``, plus the generated routing config as ``configs/routing.json``; return how many
    files were uploaded."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )
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
    import boto3

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    return {"R1EDGE_HEALTH_TABLE": create_health_table(client)}


def generated_config(edge_port: int, cluster_port: int) -> str:
    """The routing config for the full local stack (DESIGN.md format), as JSON text."""
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
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                child_env(**MOTO_ENV),
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
            router_env = {
                **MOTO_ENV,
                **tables,
                "AWS_ENDPOINT_URL_DYNAMODB": s3_url,
                "AWS_ENDPOINT_URL_S3": s3_url,
                "CONFIG_BUCKET": CONFIG_BUCKET,
                "CONFIG_PREFIX": CONFIG_PREFIX,
                "CONFIG_CACHE_DIR": str(Path(workdir.name) / "configs-cache"),
            }
            router_app = ("localapp", Path(__file__).resolve().parent)
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
        stack.start(
            "router",
            uvicorn_argv(router_app[0], args.host, args.port, router_app[1]),
            child_env(R1EDGE_CONFIG=config_source, **router_env),
        )
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
