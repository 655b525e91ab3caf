"""infra/cluster, checked offline (issue 11): every overlay renders with ``kubectl kustomize`` and
validates (tests/clustercheck.py), each serves R1 the way the router expects, the example routing
config loads with the router's own loader and names the region overlays, the engine image's
Dockerfile passes hadolint, and the deliberately broken manifests under tests/cluster/broken are
rejected, each for the reason it was broken."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from urllib.parse import urlparse

import clustercheck
import pytest
from clustercheck import CLUSTER, ROOT, check, overlays, render, schema_problems, venv_tool

from r1edge.resilience.load import KV_USAGE, WAITING
from r1edge.routing.config import load_config

BROKEN = ROOT / "tests" / "cluster" / "broken"
ROUTING = load_config(str(CLUSTER / "routing.example.yaml"))
#: overlay → (engine, GPUs per pod, the model it serves)
OVERLAYS = {
    "vllm": ("vllm", 8, "deepseek-ai/DeepSeek-R1"),
    "sglang": ("sglang", 8, "deepseek-ai/DeepSeek-R1"),
    "small-gpu": ("vllm", 1, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    "r1-us-east": ("vllm", 8, "deepseek-ai/DeepSeek-R1"),
    "r1-eu-west": ("sglang", 8, "deepseek-ai/DeepSeek-R1"),
}
REGIONS = [name for name in OVERLAYS if name.startswith("r1-")]
#: FP8 DeepSeek-R1 on disk and in GPU memory, GB (infra/cluster/README.md, Sizing); BF16 7B distill.
WEIGHTS_GB = {"deepseek-ai/DeepSeek-R1": 690, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 15.2}


@cache
def objects(overlay: str) -> tuple[dict, ...]:
    return tuple(render(CLUSTER / "overlays" / overlay))


def one(overlay: str, kind: str) -> dict:
    found = [o for o in objects(overlay) if o["kind"] == kind]
    assert len(found) == 1, f"{overlay}: expected one {kind}, found {len(found)}"
    return found[0]


def engine(overlay: str) -> dict:
    return next(
        c for c in one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "engine"
    )


def flag(container: dict, name: str) -> str | None:
    """The value of ``--name=value`` (or bare ``--name`` → ``""``) in the container's args."""
    for arg in container.get("args") or []:
        if arg == name:
            return ""
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


# --- every overlay renders and validates --------------------------------------------------------------


def test_the_overlays_are_the_ones_documented():
    assert {p.name for p in overlays()} == set(OVERLAYS)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_validates_and_has_everything_an_engine_needs(overlay):
    assert check(CLUSTER / "overlays" / overlay) == []


def test_no_kustomization_under_infra_cluster_fetches_anything():
    kustomizations = sorted(CLUSTER.rglob("kustomization.yaml"))
    assert len(kustomizations) == 1 + len(OVERLAYS)  # base + overlays
    for path in kustomizations:
        assert clustercheck.kustomization_problems(path.parent) == [], path


def test_every_rendered_object_is_checked_by_a_schema_or_a_custom_check():
    kinds = {(o["apiVersion"], o["kind"]) for name in OVERLAYS for o in objects(name)}
    custom = kinds & set(clustercheck.CUSTOM_CHECKS)
    assert custom == set(clustercheck.CUSTOM_CHECKS)  # each custom check has something to check
    assert {k for _, k in kinds - custom} == {
        "Namespace",
        "Service",
        "PersistentVolumeClaim",
        "Deployment",
        "PodDisruptionBudget",
    }


# --- each overlay serves R1 as the router expects ---------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_engine_serves_its_model_on_the_gpus_it_requests(overlay):
    kind, gpus, model = OVERLAYS[overlay]
    container = engine(overlay)
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    assert flag(container, "--served-model-name") == model == env(container)["SERVED_MODEL_NAME"]["value"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert flag(container, "--port") == "8000"
    if kind == "vllm":
        assert container["command"] == ["vllm", "serve"]
        assert flag(container, "--reasoning-parser") == "deepseek_r1"
        assert gpus == 1 or flag(container, "--tensor-parallel-size") == str(gpus)
        key = env(container)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]  # from the environment, not argv
    else:
        assert container["command"] == ["python3", "-m", "sglang.launch_server"]
        assert flag(container, "--reasoning-parser") == "deepseek-r1"
        assert flag(container, "--tp") == str(gpus)
        assert flag(container, "--enable-metrics") == ""  # SGLang serves no /metrics without it
        assert flag(container, "--api-key") == "$(R1_API_KEY)"
        key = env(container)["R1_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "r1-api-key", "key": "token"}
    secret = one(overlay, "ExternalSecret")
    assert secret["spec"]["target"]["name"] == "r1-api-key"
    assert [d["secretKey"] for d in secret["spec"]["data"]] == ["token"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pods_land_only_on_nodes_whose_gpus_hold_the_weights(overlay):
    _, gpus, model = OVERLAYS[overlay]
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    floor = {e["key"]: int(e["values"][0]) for e in term["matchExpressions"] if e["operator"] == "Gt"}
    mib_per_gpu = floor["nvidia.com/gpu.memory"]  # GPU Feature Discovery reports MiB
    assert floor.get("nvidia.com/gpu.count", 0) + 1 >= gpus
    assert gpus * mib_per_gpu * 2**20 > WEIGHTS_GB[model] * 1e9 * 1.2  # weights plus room for the KV cache
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_probes_wait_for_a_long_model_load_and_readiness_asks_what_the_router_asks(overlay):
    _, gpus, _ = OVERLAYS[overlay]
    container = engine(overlay)
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == liveness["httpGet"] == {"path": "/health", "port": "http"}
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (3600 if gpus == 8 else 600)  # 690 GB through the page cache vs 15 GB
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert container["readinessProbe"]["exec"]["command"][0] == "r1-health"
    assert container["readinessProbe"]["timeoutSeconds"] > 5  # r1-health's own per-request timeout


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_weights_come_from_the_init_container_onto_a_shared_volume(overlay):
    _, _, model = OVERLAYS[overlay]
    deployment = one(overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    fetch_env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert fetch["command"] == ["r1-fetch-weights"]
    assert fetch["args"] == ["$(MODEL_SOURCE)", "$(MODEL_DIR)"]
    assert fetch_env["MODEL_SOURCE"].startswith(f"hf://{model}@")
    assert fetch_env["MODEL_DIR"] == f"/models/{model}"
    container = engine(overlay)
    assert fetch_env["MODEL_DIR"] in (container["args"][0], flag(container, "--model-path"))
    assert env(container)["HF_HUB_OFFLINE"]["value"] == "1"  # never downloads itself
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    pvc = one(overlay, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica reads the one download
    size = pvc["spec"]["resources"]["requests"]["storage"]
    number, unit = re.fullmatch(r"(\d+)(Gi|Ti)", size).groups()
    assert int(number) * {"Gi": 2**30, "Ti": 2**40}[unit] > WEIGHTS_GB[model] * 1e9


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_autoscaler_scales_on_waiting_requests_and_holds_kv_load_at_70_percent(overlay):
    kind, _, _ = OVERLAYS[overlay]
    scaled = one(overlay, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(overlay, "Deployment")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1  # never to zero: a cold start is a model load
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    waiting, kv = triggers["waiting-requests"], triggers["kv-cache-load"]
    assert any(name in waiting["metadata"]["query"] for name in WAITING if name.startswith(kind))
    assert waiting["metricType"] == "AverageValue"
    assert any(name in kv["metadata"]["query"] for name in KV_USAGE if name.startswith(kind))
    assert (kv["metricType"], float(kv["metadata"]["threshold"])) == ("Value", 0.7)
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600
    assert "replicas" not in one(overlay, "Deployment")["spec"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_disruption_budget_and_spread_keep_a_drain_from_taking_the_endpoint_down_twice(overlay):
    pdb = one(overlay, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod = one(overlay, "Deployment")["spec"]["template"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (anti,) = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert pod["spec"]["terminationGracePeriodSeconds"] > 600  # a streamed answer may take 10 minutes


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_only_the_openai_api_and_metrics_are_routed_and_only_over_tls(overlay):
    (listener,) = one(overlay, "Gateway")["spec"]["listeners"]
    assert (listener["protocol"], listener["port"], listener["tls"]["mode"]) == ("HTTPS", 443, "Terminate")
    (rule,) = one(overlay, "HTTPRoute")["spec"]["rules"]
    assert {(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]} == {
        ("PathPrefix", "/v1"),
        ("Exact", "/metrics"),
    }
    assert rule["backendRefs"] == [{"name": "r1-engine", "port": 8000}]
    assert int(rule["timeouts"]["request"].removesuffix("s")) >= 900  # Lambda's 15 minutes


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_prometheus_series_carry_the_router_endpoint_name(overlay):
    monitor = one(overlay, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_r1edge_io_endpoint"],
        "targetLabel": "r1edge_endpoint",
    } in endpoint["relabelings"]
    assert "r1edge.io/endpoint" in one(overlay, "Service")["metadata"]["labels"]
    rules = one(overlay, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert all("by (r1edge_endpoint)" in r["expr"] for r in rules)


# --- the router's side: the example routing config ---------------------------------------------------------


def test_example_routing_config_has_two_primary_regions_and_the_public_api_as_backup():
    primary = [e for e in ROUTING.endpoints if e.priority == 0]
    backup = [e for e in ROUTING.endpoints if e.priority > 0]
    assert {e.name for e in primary} == set(REGIONS)
    assert len({e.region for e in primary}) == 2
    assert all(e.tier == "cluster" and e.metrics and e.url.startswith("https://") for e in primary)
    assert [(e.name, e.url, e.model) for e in backup] == [
        ("deepseek-public", "https://api.deepseek.com/v1", "deepseek-reasoner")
    ]
    for e in ROUTING.endpoints:
        assert (e.auth.type, e.auth.env) == ("bearer", None)  # Secrets Manager, not the environment
        assert e.auth.secret
    assert ROUTING.load.target == 0.7


@pytest.mark.parametrize("region", REGIONS)
def test_region_overlay_is_the_endpoint_the_router_calls(region):
    endpoint = next(e for e in ROUTING.endpoints if e.name == region)
    url = urlparse(endpoint.url)
    route = one(region, "HTTPRoute")
    assert route["spec"]["hostnames"] == [url.hostname]
    assert one(region, "Gateway")["spec"]["listeners"][0]["hostname"] == url.hostname
    prefixes = {m["path"]["value"] for m in route["spec"]["rules"][0]["matches"]}
    assert url.path in prefixes
    assert urlparse(endpoint.metrics_url).path in prefixes
    assert endpoint.model == env(engine(region))["SERVED_MODEL_NAME"]["value"]
    assert all(o["metadata"]["labels"]["r1edge.io/endpoint"] == region for o in objects(region))
    remote_keys = [d["remoteRef"]["key"] for d in one(region, "ExternalSecret")["spec"]["data"]]
    assert remote_keys == [endpoint.auth.secret]  # the router sends what the engine expects


# --- the deliberately broken manifests are rejected --------------------------------------------------------

BROKEN_CASES = {
    "schema": ["'readinessprobe' was unexpected", "spec.ports.0.port: '8000' is not of type 'integer'"],
    "custom-resources": [
        "spec.triggers[0].metadata.serverAddress is required",
        "'seventy percent' is not a number",
        "ServiceMonitor/r1-engine: spec.endpoints is required",
        "an HTTPS listener needs tls.certificateRefs",
    ],
    "references": ["selects no pod template", "Service r1-engine has no port 8080", "sets spec.replicas"],
    "engine": [
        "resources.limits has no nvidia.com/gpu",
        "startupProbe is missing",
        "no PodDisruptionBudget selects its pods",
        "KV-cache load target 0.9 is over 0.7",
    ],
    "remote": ["uses helmCharts", "is remote (only local paths are allowed)"],
    "unrenderable": ["kubectl kustomize failed", "no-such-patch.yaml"],
}


def test_every_broken_manifest_has_a_test():
    assert {p.name for p in BROKEN.iterdir() if p.is_dir()} == set(BROKEN_CASES)


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_manifest_is_rejected_for_the_reason_it_is_broken(case):
    problems = check(BROKEN / case)
    for expected in BROKEN_CASES[case]:
        assert any(expected in p for p in problems), f"{case}: no problem mentions {expected!r}: {problems}"


def test_remote_bases_are_refused_before_anything_is_rendered(monkeypatch):
    def no_render(directory):
        raise AssertionError(f"rendered {directory}")

    monkeypatch.setattr(clustercheck, "render", no_render)
    assert check(BROKEN / "remote")


def test_a_kind_without_schema_or_check_is_an_error_not_a_warning():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert schema_problems(widget) == [
        "Widget/w: example.com/v1 Widget has no schema and no check in tests/clustercheck.py"
    ]


def test_command_line_fails_on_a_broken_manifest_and_passes_the_overlays():
    script = str(ROOT / "tests" / "clustercheck.py")
    bad = subprocess.run([sys.executable, script, str(BROKEN / "engine")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout
    assert "startupProbe is missing" in bad.stdout
    good = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count("ok ") == len(OVERLAYS)


# --- the engine image ---------------------------------------------------------------------------------------

DOCKERFILE = CLUSTER / "image" / "Dockerfile"


def test_engine_dockerfile_passes_hadolint():
    result = subprocess.run([venv_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_images_are_pinned_and_the_overlays_run_the_matching_build():
    bases = dict(re.findall(r"^FROM (\S+) AS (\w+)$", DOCKERFILE.read_text(), re.M))
    tags = {stage: image.rsplit(":", 1)[1] for image, stage in bases.items() if stage != "scripts"}
    assert set(tags) == {"vllm", "sglang"}
    assert all(re.match(r"v\d+\.\d+\.\d+", tag) for tag in tags.values())  # a release, never latest
    for overlay, (kind, _, _) in OVERLAYS.items():
        image = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(f":{kind}-{tags[kind].split('-')[0]}"), (overlay, image)


def test_image_installs_the_commands_the_manifests_run():
    text = DOCKERFILE.read_text()
    for script, command in (("r1_fetch_weights.py", "r1-fetch-weights"), ("r1_health.py", "r1-health")):
        assert f"COPY --chmod=755 {script} /usr/local/bin/{command}" in text
        assert (CLUSTER / "image" / script).read_text().startswith("#!/usr/bin/env python3\n")


# --- the sizing notes ----------------------------------------------------------------------------------------


def sizing_rows() -> list[str]:
    text = (CLUSTER / "README.md").read_text()
    section = text.split("\n## Sizing", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return table[2:]  # header and rule


def test_sizing_table_covers_each_overlay_and_the_brief_hardware():
    rows = "\n".join(sizing_rows())
    for needle in (
        "DeepSeek-R1 ",
        "FP8",
        "8×H200",
        "2×8×H100",
        "8×MI300X",
        "Distill-Qwen-7B",
        "Distill-Qwen-32B",
        "4×A100",
    ):
        assert needle in rows, needle


def test_every_sizing_row_cites_a_public_source():
    rows = sizing_rows()
    assert len(rows) >= 8
    text = (CLUSTER / "README.md").read_text()
    notes = dict(re.findall(r"^\[(\w+)\]: (\S+)$", text, re.M))
    for row in rows:
        cited = re.findall(r"\[(\w+)\](?!\()", row)
        assert cited, f"no source in: {row}"
        for label in cited:
            assert notes.get(label, "").startswith("https://"), f"[{label}] has no https source ({row[:60]}…)"
