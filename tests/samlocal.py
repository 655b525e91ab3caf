"""The Docker-free part of ``sam local invoke``: read ``template.yaml``, resolve a function's code,
layers and environment (intrinsic functions evaluated against parameter defaults), load its ASGI
app the way the Lambda Web Adapter would start it (from ``run.sh`` or the Dockerfile's
``ENTRYPOINT``/``CMD``), and turn a Lambda HTTP event (payload format 2.0: Function URL or HTTP
API) into the HTTP request the adapter would send to it."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[1]
PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "r1edge-test",
}


def load_template() -> dict[str, Any]:
    return cfn_yaml.load(str(ROOT / "template.yaml"))


class Resolver:
    """Evaluates Ref, Fn::Sub, Fn::If, Fn::GetAtt, Fn::Equals, Fn::Not against parameter values
    (defaults unless overridden) and given resource attributes."""

    def __init__(self, template: dict[str, Any], attributes: dict[str, str], parameters: dict[str, Any] | None = None):
        self.template = template
        self.params = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()}
        self.params.update(parameters or {})
        self.attributes = attributes

    def ref(self, name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.params:
            return self.params[name]
        if name in self.template["Resources"]:
            return name  # a resource's Ref: its physical name; the logical id stands in
        raise KeyError(name)

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(x) for x in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

                def sub(match: re.Match[str]) -> str:
                    name = match.group(1)
                    if name in extra:
                        return str(extra[name])
                    if "." in name:
                        return self.attributes[name]
                    return str(self.ref(name))

                return re.sub(r"\$\{([^}!]+)\}", sub, text)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::GetAtt":
                return self.attributes[".".join(arg)]
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return a == b
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Condition":
                return self.condition(arg)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not _NO_VALUE}


_NO_VALUE = object()


def sam_translate(template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate the SAM template to plain CloudFormation with aws-sam-translator, as
    ``sam validate`` does: local code paths become placeholder S3 URIs and the image a placeholder
    ECR URI (``sam build``/``sam deploy`` fill in the real ones).

    Raises:
        samtranslator.model.exceptions.InvalidDocumentException: the template is not valid SAM.
    """
    from samtranslator.translator.transform import transform

    document = json.loads(json.dumps(template))
    for name, resource in document["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                props["ImageUri"] = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{name.lower()}:latest"
            else:
                props["CodeUri"] = f"s3://placeholder-bucket/{name}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://placeholder-bucket/{name}.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return transform(document, parameters or {}, NoManagedPolicies())


def function_environment(template: dict[str, Any], name: str, resolver: Resolver) -> dict[str, str]:
    """Globals' and the function's environment variables, resolved."""
    env = dict(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    props = template["Resources"][name]["Properties"]
    env.update(props.get("Environment", {}).get("Variables", {}))
    return {k: str(resolver.resolve(v)) for k, v in env.items()}


def asgi_target_from_run_sh(path: Path) -> tuple[str, str]:
    """``(module, attribute)`` of the ASGI app that ``run.sh`` starts with uvicorn."""
    words = shlex.split(path.read_text(), comments=True)
    start = words.index("uvicorn")
    target = next(w for w in words[start + 1 :] if re.fullmatch(r"[\w.]+:\w+", w))
    module, attr = target.split(":")
    return module, attr


def dockerfile_final_stage(path: Path) -> dict[str, Any]:
    """The last stage of a Dockerfile: ``ENV`` values, ``COPY`` sources from the build context,
    and the ``ENTRYPOINT``/``CMD`` exec-form lists."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stage: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage = {"env": {}, "copy": [], "entrypoint": [], "cmd": []}
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                stage["env"][key] = value
        elif instruction == "COPY" and not rest.startswith("--from"):
            stage["copy"].append(shlex.split(rest)[0])
        elif instruction in ("ENTRYPOINT", "CMD"):
            stage[instruction.lower()] = json.loads(rest)
    return stage


def load_module(path: Path, name: str) -> ModuleType:
    """Import a function's ``app.py`` by path, under a unique module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_event(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "tests" / "events" / name).read_text())


def adapter_request(event: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
    """The HTTP request the Lambda Web Adapter makes of a payload-2.0 event: method, path and
    query, headers plus ``x-amzn-request-context`` and ``x-amzn-lambda-context``, and the body."""
    body = event.get("body") or ""
    content = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    headers = dict(event.get("headers") or {})
    headers["x-amzn-request-context"] = json.dumps(event["requestContext"])
    headers["x-amzn-lambda-context"] = json.dumps(
        {
            "request_id": event["requestContext"]["requestId"],
            "deadline": deadline_ms,
            "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:test",
        }
    )
    query = event.get("rawQueryString") or ""
    return {
        "method": event["requestContext"]["http"]["method"],
        "url": event["rawPath"] + (f"?{query}" if query else ""),
        "headers": headers,
        "content": content,
    }
