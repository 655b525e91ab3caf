"""The two scripts the engine image adds (infra/cluster/image): r1-fetch-weights, the init
container that puts checked weights on the model volume, and r1-health, the readiness probe.
No network: the Hub download is a fake, S3 is moto in process, HTTP is an injected getter."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import boto3
import pytest
from clustercheck import CLUSTER
from moto import mock_aws

IMAGE = CLUSTER / "image"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, IMAGE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


fw = load("r1_fetch_weights")
health = load("r1_health")


@pytest.mark.parametrize("name", ["r1_fetch_weights", "r1_health"])
def test_scripts_import_only_the_standard_library_at_module_level(name):
    tree = ast.parse((IMAGE / f"{name}.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    modules = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0] for n in top for a in n.names}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules


# --- r1-fetch-weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://deepseek-ai/DeepSeek-R1", ("hf", "deepseek-ai/DeepSeek-R1", "main")),
        ("hf://deepseek-ai/DeepSeek-R1@0a1b2c3", ("hf", "deepseek-ai/DeepSeek-R1", "0a1b2c3")),
        ("s3://models/deepseek-r1/fp8", ("s3", "models", "deepseek-r1/fp8")),
        ("s3://models", ("s3", "models", "")),
    ],
)
def test_sources_parse(text, expected):
    source = fw.parse_source(text)
    assert (source.kind, source.name, source.ref) == expected
    assert source.text == text


@pytest.mark.parametrize(
    "text", ["deepseek-ai/DeepSeek-R1", "hf://DeepSeek-R1", "hf://a/b/c", "s3:///key", "https://x/y"]
)
def test_bad_sources_are_refused(text):
    with pytest.raises(fw.SourceError):
        fw.parse_source(text)


def write_model(dest: Path, shards: int = 3, skip: int | None = None, empty: int | None = None) -> None:
    """A model directory as the Hub lays it out: config, a safetensors index and its shards."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text('{"model_type": "deepseek_v3"}')
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    index = {"metadata": {}, "weight_map": {f"layer.{i}": name for i, name in enumerate(names)}}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    for i, name in enumerate(names):
        if i != skip:
            (dest / name).write_bytes(b"" if i == empty else b"\0" * 16)


def test_complete_model_has_nothing_missing(tmp_path):
    write_model(tmp_path)
    assert fw.missing_files(tmp_path) == []


def test_a_missing_or_empty_shard_makes_the_model_incomplete(tmp_path):
    write_model(tmp_path / "a", skip=1)
    write_model(tmp_path / "b", empty=2)
    assert fw.missing_files(tmp_path / "a") == ["model-00002-of-00003.safetensors"]
    assert fw.missing_files(tmp_path / "b") == ["model-00003-of-00003.safetensors"]


def test_without_an_index_one_safetensors_file_and_the_config_are_needed(tmp_path):
    assert fw.missing_files(tmp_path) == ["config.json", "*.safetensors"]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    assert fw.missing_files(tmp_path) == []


def test_fetch_downloads_once_then_finds_the_weights_present(tmp_path):
    calls = []

    def fake_hub(source, dest):
        calls.append(source.text)
        write_model(dest)

    source = fw.parse_source("hf://deepseek-ai/DeepSeek-R1@main")
    dest = tmp_path / "deepseek-ai" / "DeepSeek-R1"
    assert fw.fetch(source, dest, {"hf": fake_hub}) == "downloaded"
    assert (dest / fw.MARKER).read_text() == "hf://deepseek-ai/DeepSeek-R1@main\n"
    assert fw.fetch(source, dest, {"hf": fake_hub}) == "present"
    assert calls == ["hf://deepseek-ai/DeepSeek-R1@main"]
    # another revision is another download, and a shard deleted since is noticed
    assert fw.fetch(fw.parse_source("hf://deepseek-ai/DeepSeek-R1@abc123"), dest, {"hf": fake_hub}) == "downloaded"
    (dest / "model-00002-of-00003.safetensors").unlink()
    assert fw.fetch(fw.parse_source("hf://deepseek-ai/DeepSeek-R1@abc123"), dest, {"hf": fake_hub}) == "downloaded"
    assert len(calls) == 3


def test_an_incomplete_download_fails_and_leaves_no_marker(tmp_path):
    source = fw.parse_source("hf://deepseek-ai/DeepSeek-R1")
    with pytest.raises(fw.FetchError, match=r"missing model-00001-of-00003\.safetensors"):
        fw.fetch(source, tmp_path / "m", {"hf": lambda s, d: write_model(d, skip=0)})
    assert not (tmp_path / "m" / fw.MARKER).exists()


def test_a_failing_download_says_what_failed(tmp_path):
    def broken(source, dest):
        raise ConnectionError("hub unreachable")

    with pytest.raises(fw.FetchError, match=r"download of hf://a/b failed: ConnectionError: hub unreachable"):
        fw.fetch(fw.parse_source("hf://a/b"), tmp_path / "m", {"hf": broken})


@mock_aws
def test_s3_source_copies_the_prefix_and_skips_what_is_already_there(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    local = tmp_path / "src"
    write_model(local)
    for path in local.iterdir():
        s3.upload_file(str(path), "models", f"r1/fp8/{path.name}")
    s3.put_object(Bucket="models", Key="r1/other.txt", Body=b"not under the prefix")
    dest = tmp_path / "dest"
    assert (
        fw.fetch(fw.parse_source("s3://models/r1/fp8"), dest, {"s3": lambda s, d: fw.download_s3(s, d, s3)})
        == "downloaded"
    )
    assert sorted(p.name for p in dest.iterdir() if p.name != fw.MARKER) == sorted(p.name for p in local.iterdir())
    downloads = []
    original = s3.download_file
    monkeypatch.setattr(s3, "download_file", lambda *a, **k: downloads.append(a[1]) or original(*a, **k))
    (dest / fw.MARKER).unlink()  # force a second pass: nothing is fetched again
    fw.download_s3(fw.parse_source("s3://models/r1/fp8"), dest, s3)
    assert downloads == []


@mock_aws
def test_an_empty_s3_prefix_is_an_error(tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    with pytest.raises(fw.FetchError, match="no objects under s3://models/none"):
        fw.download_s3(fw.parse_source("s3://models/none"), tmp_path, s3)


def test_command_line_exit_codes(tmp_path, capsys):
    assert fw.main([]) == 2
    assert fw.main(["deepseek-ai/DeepSeek-R1", str(tmp_path)]) == 2
    assert "hf:// or s3://" in capsys.readouterr().err
    write_model(tmp_path / "m")
    (tmp_path / "m" / fw.MARKER).write_text("hf://a/b\n")
    assert fw.main(["hf://a/b", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "source": "hf://a/b",
        "dest": str(tmp_path / "m"),
        "state": "present",
    }


# --- r1-health --------------------------------------------------------------------------------------------


def engine(health_status=200, models_status=200, body=None, seen=None):
    """A fake engine answering the two calls r1-health makes."""
    body = body if body is not None else json.dumps({"object": "list", "data": [{"id": "deepseek-ai/DeepSeek-R1"}]})

    def get(url, headers, timeout):
        if seen is not None:
            seen.append((url, headers, timeout))
        if url.endswith("/health"):
            return health_status, b""
        return models_status, body.encode()

    return get


def test_ready_when_health_is_ok_and_the_model_is_listed():
    seen = []
    assert health.check("http://127.0.0.1:8000/", "deepseek-ai/DeepSeek-R1", "sk-x", 5, engine(seen=seen)) is None
    assert seen == [
        ("http://127.0.0.1:8000/health", {}, 5),
        ("http://127.0.0.1:8000/v1/models", {"Authorization": "Bearer sk-x"}, 5),
    ]


def test_no_key_means_no_authorization_header():
    seen = []
    health.check("http://e:8000", "deepseek-ai/DeepSeek-R1", None, 5, engine(seen=seen))
    assert seen[1][1] == {}


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        (engine(health_status=503), "GET /health: 503"),
        (engine(health_status=0), "GET /health:"),
        (engine(models_status=401), "GET /v1/models: HTTP 401 (check R1_API_KEY)"),
        (engine(body="<html>"), "not an OpenAI model list"),
        (engine(body=json.dumps({"data": [{"id": "other"}]})), "'deepseek-ai/DeepSeek-R1' not served (served: other)"),
    ],
)
def test_not_ready_says_why(fake, reason):
    assert reason in health.check("http://e:8000", "deepseek-ai/DeepSeek-R1", "k", 5, fake)


def test_health_command_line(monkeypatch, capsys):
    monkeypatch.delenv("SERVED_MODEL_NAME", raising=False)
    assert health.main([]) == 2
    monkeypatch.setattr(health, "check", lambda url, model, key, timeout: "GET /health: 503")
    assert health.main(["--model", "m"]) == 1
    assert "not ready: GET /health: 503" in capsys.readouterr().err
    monkeypatch.setattr(health, "check", lambda url, model, key, timeout: None)
    monkeypatch.setenv("SERVED_MODEL_NAME", "m")
    assert health.main([]) == 0
    assert health.main(["--bogus"]) == 2
