"""Model file resolution and the edge's request → llama.cpp argument mapping."""

from __future__ import annotations

import hashlib

import pytest

from r1edge.edge.app import completion_kwargs
from r1edge.edge.model import DEFAULT_MODEL_SHA256, ModelError, check_model_file, resolve_model_path, sha256_file
from r1edge.protocol.errors import InvalidRequest
from r1edge.protocol.validation import validate_chat_request


def test_packaged_default_model_resolves_and_matches_its_pinned_sha256():
    path = resolve_model_path(environ={})
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(path) == DEFAULT_MODEL_SHA256


def test_model_path_wins_and_is_checked(tmp_path):
    good = tmp_path / "m.gguf"
    good.write_bytes(b"GGUF" + b"\0" * 64)
    assert resolve_model_path(environ={"MODEL_PATH": str(good)}) == good
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model_path(environ={"MODEL_PATH": str(bad)})
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(environ={"MODEL_PATH": str(tmp_path / "absent.gguf")})


def test_sha256_mismatch_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\1" * 10)
    with pytest.raises(ModelError, match="expected " + DEFAULT_MODEL_SHA256):
        check_model_file(path, DEFAULT_MODEL_SHA256)


def kwargs(**body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return completion_kwargs(validate_chat_request(body), "smol")


def test_sampling_fields_are_honoured():
    out = kwargs(max_completion_tokens=12, max_tokens=99, temperature=0.0, top_p=0.5, stop=["\n"], seed=3)
    assert out["max_tokens"] == 12  # the newer name wins
    assert (out["temperature"], out["top_p"], out["stop"], out["seed"]) == (0.0, 0.5, ["\n"], 3)
    assert out["model"] == "smol"
    assert kwargs(max_tokens=7)["max_tokens"] == 7
    assert "temperature" not in kwargs()


def test_messages_are_flattened_for_the_chat_template():
    out = kwargs(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    )
    assert out["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"12": 500}}, "logit_bias"),
        ({"logit_bias": {"²": 5}}, "logit_bias"),
    ],
)
def test_unsupported_features_are_400_at_the_edge(extra, param):
    with pytest.raises(InvalidRequest) as info:
        kwargs(**extra)
    assert info.value.param == param


def test_json_object_and_logit_bias_pass_through():
    out = kwargs(response_format={"type": "json_object"}, logit_bias={"42": -100})
    assert out["response_format"] == {"type": "json_object"}
    assert out["logit_bias"] == {"42": -100}


GGUF = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def s3(models_s3):
    models_s3.put_object(Bucket="models", Key="r1/distill.gguf", Body=GGUF)
    return models_s3


def test_model_uri_is_downloaded_once_and_reused(s3, tmp_path):
    env = {"MODEL_URI": "s3://models/r1/distill.gguf", "MODEL_CACHE_DIR": str(tmp_path)}
    path = resolve_model_path(env, image_path=tmp_path / "absent.gguf", s3=s3)
    assert path.read_bytes() == GGUF
    assert path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
    s3.delete_object(Bucket="models", Key="r1/distill.gguf")
    assert resolve_model_path(env, image_path=tmp_path / "absent.gguf", s3=s3) == path  # reused, not fetched


def test_model_uri_with_a_wrong_sha256_is_refused_and_removed(s3, tmp_path):
    env = {"MODEL_URI": "s3://models/r1/distill.gguf", "MODEL_CACHE_DIR": str(tmp_path), "MODEL_SHA256": "0" * 64}
    with pytest.raises(ModelError, match="expected 0000"):
        resolve_model_path(env, image_path=tmp_path / "absent.gguf", s3=s3)
    assert list(tmp_path.iterdir()) == []
    good = {**env, "MODEL_SHA256": hashlib.sha256(GGUF).hexdigest()}
    assert resolve_model_path(good, image_path=tmp_path / "absent.gguf", s3=s3).read_bytes() == GGUF


def test_model_uri_errors_name_what_was_tried(s3, tmp_path):
    missing = {"MODEL_URI": "s3://models/nope.gguf", "MODEL_CACHE_DIR": str(tmp_path)}
    with pytest.raises(ModelError, match=r"cannot download s3://models/nope\.gguf"):
        resolve_model_path(missing, image_path=tmp_path / "absent.gguf", s3=s3)
    with pytest.raises(ModelError, match="s3://bucket/key"):
        resolve_model_path({"MODEL_URI": "https://x/y.gguf"}, image_path=tmp_path / "absent.gguf", s3=s3)
    s3.put_object(Bucket="models", Key="page.html", Body=b"<html>")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model_path(
            {"MODEL_URI": "s3://models/page.html", "MODEL_CACHE_DIR": str(tmp_path)},
            image_path=tmp_path / "absent.gguf",
            s3=s3,
        )
    assert list(tmp_path.iterdir()) == []


def test_image_model_wins_over_model_uri(tmp_path):
    baked = tmp_path / "model.gguf"
    baked.write_bytes(GGUF)
    assert resolve_model_path({"MODEL_URI": "s3://models/x.gguf"}, image_path=baked) == baked
