"""layers/model/fetch_model.py: a GGUF file fetched from a path or S3 (moto), verified, and placed
in the image path or in S3. The HTTP source and the edge loading the S3 copy for real are in
tests/integration/test_edge_fetch_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fetch_model import fetch_model, main
from modelfiles import DIGEST, GGUF, write_gguf

from r1edge.edge.model import ModelError


@pytest.fixture
def source(tmp_path) -> Path:
    return write_gguf(tmp_path)


@pytest.fixture
def s3(models_s3):
    return models_s3


def test_a_local_file_is_verified_and_placed_at_the_image_path(source, tmp_path, capsys):
    dest = tmp_path / "opt" / "models" / "model.gguf"
    assert main([str(source), str(dest), "--sha256", DIGEST.upper()]) == 0
    assert dest.read_bytes() == GGUF
    assert json.loads(capsys.readouterr().out) == {"dest": str(dest), "bytes": len(GGUF), "sha256": DIGEST}
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]  # no temporary file left


def test_a_sha256_mismatch_leaves_nothing_at_the_destination(source, tmp_path, capsys):
    dest = tmp_path / "out" / "model.gguf"
    assert main([str(source), str(dest), "--sha256", "0" * 64]) == 1
    assert "expected " + "0" * 64 in capsys.readouterr().err
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(ModelError, match="64 hex characters"):
        fetch_model(str(source), str(dest), "abc")


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(ModelError, match="not a GGUF file"):
        fetch_model(str(page), str(tmp_path / "model.gguf"))
    assert not (tmp_path / "model.gguf").exists()
    with pytest.raises(ModelError, match="cannot read"):
        fetch_model(str(tmp_path / "absent.gguf"), str(tmp_path / "model.gguf"))


def test_upload_to_s3_and_back(source, tmp_path, s3):
    result = fetch_model(str(source), "s3://models/r1/model.gguf", s3=s3)
    assert result == {"dest": "s3://models/r1/model.gguf", "bytes": len(GGUF), "sha256": DIGEST}
    head = s3.head_object(Bucket="models", Key="r1/model.gguf")
    assert head["Metadata"]["sha256"] == DIGEST
    back = tmp_path / "back.gguf"
    fetch_model("s3://models/r1/model.gguf", str(back), DIGEST, s3=s3)
    assert back.read_bytes() == GGUF


@pytest.mark.parametrize("kind", ["directory", "trailing-slash", "parent-is-a-file"])
def test_a_bad_destination_is_a_clear_error_before_any_download(source, tmp_path, kind):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    dest = {
        "directory": tmp_path / "dir",
        "trailing-slash": f"{tmp_path}/new/",
        "parent-is-a-file": tmp_path / "file" / "m.gguf",
    }[kind]
    with pytest.raises(ModelError, match=r"directory|cannot write"):
        fetch_model(str(source), str(dest))


def test_an_s3_destination_that_cannot_be_written_is_a_clear_error(source, s3):
    with pytest.raises(ModelError, match=r"cannot write s3://no-such-bucket/m\.gguf"):
        fetch_model(str(source), "s3://no-such-bucket/m.gguf", s3=s3)
    with pytest.raises(ModelError, match="s3://bucket/key"):
        fetch_model(str(source), "s3://only-bucket", s3=s3)


def test_without_a_sha256_the_cli_warns(source, tmp_path, capsys):
    assert main([str(source), str(tmp_path / "m.gguf")]) == 0
    assert "no --sha256" in capsys.readouterr().err
