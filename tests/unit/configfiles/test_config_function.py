"""The config function: every event source, ETags and conditional requests, caching with a warm
path and stale-if-error, and names that never reach S3 escaped (S3 via moto)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws
from samlocal import ROOT, load_event, load_module

from r1edge.configfiles.httpcache import http_date, none_match
from r1edge.configfiles.store import ConfigStore, SourceError
from r1edge.protocol.errors import NotFound, Overloaded

ROUTING = b"endpoints:\n  - {name: edge-a, url: 'http://127.0.0.1:8001/v1', tier: edge}\n"
BLOB = bytes(range(256)) * 8
MANIFEST = b'{"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "n_ctx": 2048}'
ETAG = '"' + hashlib.sha256(ROUTING).hexdigest() + '"'
DEFAULT_CACHE_CONTROL = "public, max-age=60, s-maxage=300, stale-while-revalidate=60, stale-if-error=86400"
CONTEXT = SimpleNamespace(
    function_name="r1edge-config",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:r1edge-config",
    aws_request_id="4f6c1a52-0d8e-4b1f-9a3e-2f7b8c9d0e1f",
)
SOURCES = ["config-httpapi.json", "config-function-url.json", "config-rest.json", "config-cloudfront.json"]


@pytest.fixture
def s3(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("CONFIG_BUCKET", "cfg")
    monkeypatch.setenv("CONFIG_PREFIX", "configs/")
    monkeypatch.setenv("CONFIG_CACHE_DIR", str(tmp_path / "cache"))
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="cfg")
        client.put_object(Bucket="cfg", Key="configs/routing.yaml", Body=ROUTING)
        client.put_object(Bucket="cfg", Key="configs/models/blob.bin", Body=BLOB)
        client.put_object(Bucket="cfg", Key="configs/models/edge.json", Body=MANIFEST)
        client.put_object(Bucket="cfg", Key="configs/big.txt", Body=b"x" * 1_200_000)
        yield client


@pytest.fixture
def app(s3):
    module = load_module(ROOT / "functions" / "config" / "app.py", "config_app")
    module._service.cache_clear()
    return module


@pytest.fixture
def fetches(monkeypatch):
    """Every S3 fetch, recorded."""
    from r1edge.configfiles.store import S3Source

    calls: list[tuple[str, str | None]] = []
    original = S3Source.fetch

    def recording(self, key, if_none_match):
        calls.append((key, if_none_match))
        return original(self, key, if_none_match)

    monkeypatch.setattr(S3Source, "fetch", recording)
    return calls


def make_event(source: str, name: str = "routing.yaml", headers: dict | None = None, method: str = "GET") -> dict:
    event = copy.deepcopy(load_event(source))
    path = "/v1/configs/" + name
    headers = headers or {}
    if source == "config-cloudfront.json":
        request = event["Records"][0]["cf"]["request"]
        request["uri"], request["method"] = path, method
        request["headers"] = {"host": request["headers"]["host"]} | {
            k.lower(): [{"key": k, "value": v}] for k, v in headers.items()
        }
    elif source == "config-rest.json":
        event["path"], event["httpMethod"] = path, method
        event["headers"] = {"Host": event["headers"]["Host"], **headers}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    else:
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["requestContext"]["http"]["method"] = method
        event["headers"] = {"host": event["headers"]["host"], **headers}
    return event


def call(app, source: str, handler: str = "lambda_handler", **kwargs) -> tuple[int, dict[str, str], bytes]:
    """Invoke the handler; ``(status, headers with lower-case names, body bytes)``."""
    result = getattr(app, handler)(make_event(source, **kwargs), CONTEXT)
    if "uri" in result:  # CloudFront: the request passed through to the origin
        return 0, {}, b""
    if "Records" in make_event(source):
        headers = {name: entries[0]["value"] for name, entries in result["headers"].items()}
        body = result.get("body", "")
        raw = base64.b64decode(body) if result.get("bodyEncoding") == "base64" else body.encode()
        return int(result["status"]), headers, raw
    headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    headers |= {k.lower(): v[0] for k, v in (result.get("multiValueHeaders") or {}).items()}
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    return result["statusCode"], headers, raw


@pytest.mark.parametrize("source", SOURCES)
def test_every_event_source_serves_the_file_with_its_caching_headers(app, source):
    status, headers, body = call(app, source)
    assert status == 200
    assert body == ROUTING
    assert headers["etag"] == ETAG
    assert headers["content-type"] == "application/yaml"
    assert headers["cache-control"] == DEFAULT_CACHE_CONTROL
    assert headers["last-modified"].endswith(" GMT")


@pytest.mark.parametrize("source", SOURCES)
def test_json_files_are_served_byte_for_byte_by_every_event_source(app, source):
    status, headers, body = call(app, source, name="models/edge.json")
    assert (status, headers["content-type"], body) == (200, "application/json", MANIFEST)


@pytest.mark.parametrize("source", SOURCES)
def test_binary_files_survive_every_event_source(app, source):
    status, headers, body = call(app, source, name="models/blob.bin")
    assert (status, headers["content-type"], body) == (200, "application/octet-stream", BLOB)


@pytest.mark.parametrize(
    ("if_none_match", "expected"),
    [('W/"cfg-42"', True), ('"cfg-42"', True), ('"x", W/"cfg-42"', True), ('W/"cfg-41"', False), ("*", True)],
)
def test_the_conditional_request_table(if_none_match, expected):
    # RFC 9110 §13.1.2: weak comparison; a list matches when any member does; * matches anything.
    assert none_match(if_none_match, '"cfg-42"') is expected


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("header", "status"),
    [(f"W/{ETAG}", 304), (ETAG, 304), (f'"x", W/{ETAG}', 304), ('W/"cfg-41"', 200), (None, 200), ("*", 304)],
)
def test_if_none_match_through_each_source(app, source, header, status):
    got, headers, body = call(app, source, headers={"If-None-Match": header} if header else {})
    assert got == status
    assert headers["etag"] == ETAG
    assert headers["cache-control"] == DEFAULT_CACHE_CONTROL
    if status == 304:
        assert body == b""
        assert "last-modified" in headers


@pytest.mark.parametrize("source", ["config-rest.json", "config-httpapi.json"])
def test_request_headers_are_read_case_insensitively(app, source):
    assert call(app, source, headers={"IF-NONE-MATCH": ETAG})[0] == 304
    later = http_date(datetime.now(UTC) + timedelta(hours=1))
    assert call(app, source, headers={"if-MODIFIED-since": later})[0] == 304


def test_if_modified_since_only_without_if_none_match(app):
    later = http_date(datetime.now(UTC) + timedelta(hours=1))
    earlier = http_date(datetime.now(UTC) - timedelta(days=1))
    source = "config-httpapi.json"
    assert call(app, source, headers={"If-Modified-Since": later})[0] == 304
    assert call(app, source, headers={"If-Modified-Since": earlier})[0] == 200
    assert call(app, source, headers={"If-Modified-Since": "yesterday-ish"})[0] == 200
    assert call(app, source, headers={"If-None-Match": '"other"', "If-Modified-Since": later})[0] == 200


def test_head_has_the_headers_and_no_body(app):
    status, headers, body = call(app, "config-httpapi.json", method="HEAD")
    assert (status, body, headers["content-length"], headers["etag"]) == (200, b"", str(len(ROUTING)), ETAG)


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "..%2fsecret",
        "%2e%2e/secret",
        "%252e%252e/secret",
        "a/../b",
        "./a",
        "/etc/passwd",
        "a//b",
        "a\\b",
        "a%5cb",
        "a%00b",
        "a%0ab",
        "a\tb",
        ".hidden",
        "%ff",
        "x" * 300,
    ],
)
@pytest.mark.parametrize("source", ["config-httpapi.json", "config-cloudfront.json"])
def test_traversal_and_odd_names_are_400_and_never_reach_s3(app, fetches, source, name):
    status, _, body = call(app, source, name=name)
    assert status == 400
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_config_name", "name")
    assert fetches == []


@pytest.mark.parametrize("source", SOURCES)
def test_a_missing_config_is_404_in_the_openai_shape(app, source):
    status, headers, body = call(app, source, name="nope.json")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
    assert json.loads(body)["error"]["message"] == "No config named 'nope.json'."  # not the S3 key
    assert headers["content-type"] == "application/json"


def test_other_methods_are_405_and_other_paths_404(app):
    status, headers, _ = call(app, "config-httpapi.json", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    event = make_event("config-httpapi.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/v1/other"
    result = app.lambda_handler(event, CONTEXT)
    assert result["statusCode"] == 404


def test_the_warm_path_does_not_touch_s3(app, fetches):
    for _ in range(3):
        assert call(app, "config-httpapi.json")[0] == 200
    assert fetches == [("configs/routing.yaml", None)]


def test_cloudfront_passes_a_too_large_file_through_to_the_origin(app):
    event = make_event("config-cloudfront.json", name="big.txt")
    result = app.lambda_handler(event, CONTEXT)
    assert result == event["Records"][0]["cf"]["request"]  # forwarded, not generated


def test_the_lambda_at_edge_variant_reads_its_bundled_settings(s3, tmp_path, monkeypatch):
    monkeypatch.delenv("CONFIG_BUCKET")  # Lambda@Edge has no environment variables
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(ROOT / "functions" / "config" / "app.py", bundle / "app.py")
    settings = {"bucket": "cfg", "prefix": "configs/", "cache_dir": str(tmp_path / "edge-cache")}
    (bundle / "edge-settings.json").write_text(json.dumps(settings))
    module = load_module(bundle / "app.py", "config_edge_app")
    status, headers, body = call(module, "config-cloudfront.json", handler="edge_handler")
    assert (status, body, headers["etag"]) == (200, ROUTING, ETAG)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FlakySource:
    """A store that answers from a dict until ``down`` is set."""

    def __init__(self) -> None:
        self.files = {"a.json": b'{"v": 1}'}
        self.down = False
        self.calls: list[tuple[str, str | None]] = []

    def fetch(self, key, if_none_match):
        from r1edge.configfiles.store import NotModifiedError

        self.calls.append((key, if_none_match))
        if self.down:
            raise SourceError("S3 SlowDown")
        if key not in self.files:
            raise NotFound(f"no {key}")
        tag = '"s3-' + hashlib.md5(self.files[key]).hexdigest() + '"'  # S3's ETag is an MD5
        if if_none_match == tag:
            raise NotModifiedError
        return self.files[key], tag, datetime(2026, 11, 1, tzinfo=UTC)


def test_revalidation_after_max_age_is_a_conditional_get():
    source, clock = FlakySource(), Clock()
    store = ConfigStore(source, max_age=60, clock=clock)
    first = store.get("a.json")
    clock.now += 61
    again = store.get("a.json")
    assert source.calls == [("a.json", None), ("a.json", first.source_etag)]  # the second one was a 304
    assert again.body == first.body
    assert again.fetched_at == clock.now
    source.files["a.json"] = b'{"v": 2}'
    clock.now += 61
    assert store.get("a.json").body == b'{"v": 2}'


def test_stale_if_error_serves_the_old_copy_with_its_age_then_503(tmp_path):
    from r1edge.configfiles.api import ConfigSettings, serve

    source, clock = FlakySource(), Clock()
    store = ConfigStore(source, max_age=60, clock=clock)
    settings = ConfigSettings(bucket="b", cache_dir=None)
    assert serve(store, settings, "GET", "a.json", {}, clock).status == 200
    source.down = True
    clock.now += 3600
    stale = serve(store, settings, "GET", "a.json", {}, clock)
    assert (stale.status, stale.body, stale.headers["Age"]) == (200, b'{"v": 1}', "3600")
    clock.now += 86_400
    with pytest.raises(Overloaded) as gone:
        serve(store, settings, "GET", "a.json", {}, clock)
    assert gone.value.headers["Retry-After"] == "5"
    with pytest.raises(Overloaded):
        ConfigStore(source, clock=clock).get("a.json")  # no copy at all


def test_the_tmp_copy_is_shared_by_a_new_store_in_the_same_container(tmp_path):
    source, clock = FlakySource(), Clock()
    ConfigStore(source, max_age=60, cache_dir=str(tmp_path), clock=clock).get("a.json")
    source.down = True
    fresh = ConfigStore(source, max_age=60, cache_dir=str(tmp_path), clock=clock)
    assert fresh.get("a.json").body == b'{"v": 1}'
    assert len(source.calls) == 1


def test_a_deleted_config_is_forgotten():
    source, clock = FlakySource(), Clock()
    store = ConfigStore(source, max_age=60, clock=clock)
    store.get("a.json")
    del source.files["a.json"]
    clock.now += 61
    with pytest.raises(NotFound):
        store.get("a.json")
    source.down = True
    with pytest.raises(Overloaded):  # nothing stale left to serve
        store.get("a.json")


def test_cache_policies_per_prefix(app, monkeypatch):
    policies = {"models/": {"max_age": 3600, "s_maxage": 86400, "stale_while_revalidate": None}}
    monkeypatch.setenv("CONFIG_CACHE_POLICIES", json.dumps(policies))
    app._service.cache_clear()
    _, headers, _ = call(app, "config-httpapi.json", name="models/blob.bin")
    assert headers["cache-control"] == "public, max-age=3600, s-maxage=86400, stale-if-error=86400"
    _, headers, _ = call(app, "config-httpapi.json")
    assert headers["cache-control"] == DEFAULT_CACHE_CONTROL


def test_every_answer_is_counted_as_an_emf_request_metric(app, capsys):
    assert call(app, "config-httpapi.json")[0] == 200
    assert call(app, "config-httpapi.json", name="nope.yaml")[0] == 404
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    requests = {(line["status"], line["route"]): line["Requests"] for line in emf if "Requests" in line}
    assert requests == {("200", "/v1/configs/{name}"): [1.0], ("404", "/v1/configs/{name}"): [1.0]}
    assert {line["service"] for line in emf} == {"config"}
