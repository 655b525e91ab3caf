"""Fetch a GGUF model, verify it, and put it where the edge function will load it.

    python layers/model/fetch_model.py SOURCE DEST [--sha256 HEX]

SOURCE is a local path, an ``http(s)://`` URL or ``s3://bucket/key``; DEST is a local path (in an
image build, ``/opt/models/model.gguf``, where :mod:`r1edge.edge.model` looks) or ``s3://bucket/key``
(then point the stack's ``ModelBucket``/``ModelKey``/``ModelSha256`` parameters at it, and the
function downloads it into ``/tmp`` once per container). Container-image functions cannot use
Lambda layers, so these are the two ways a model reaches the edge function.

The file is streamed (never read whole into memory) to a temporary name beside DEST, checked —
GGUF magic bytes, and the SHA-256 when ``--sha256`` is given — and only then renamed or uploaded.
A mismatch exits 1 and leaves nothing at DEST. On success one JSON line is printed:
``{"dest", "bytes", "sha256"}``; put that SHA-256 in ``ModelSha256`` (``MODEL_SHA256``).

Environment: ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` reach a local S3 (moto) as boto3
documents. Nothing here downloads from a model hub unless you give it such a URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "r1edge"))  # the r1edge package

from r1edge.edge.model import ModelError, check_model_file, sha256_file

CHUNK_BYTES = 1 << 20


def _s3_parts(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ModelError(f"expected s3://bucket/key, got {uri!r}")
    return parsed.netloc, key


def _s3_client(s3: Any) -> Any:
    if s3 is not None:
        return s3
    import boto3  # lazy: only S3 sources and destinations need it

    return boto3.client("s3")


def fetch_to(source: str, target: Path, s3: Any = None) -> None:
    """Stream ``source`` (path, http(s) URL or s3 URI) into the file ``target``.

    Raises:
        ModelError: the source cannot be read.
    """
    scheme = urlparse(source).scheme
    try:
        if scheme in ("http", "https"):
            import httpx

            with httpx.stream("GET", source, follow_redirects=True, timeout=60) as response, open(target, "wb") as out:
                response.raise_for_status()
                for block in response.iter_bytes(CHUNK_BYTES):
                    out.write(block)
        elif scheme == "s3":
            bucket, key = _s3_parts(source)
            with open(target, "wb") as out:
                _s3_client(s3).download_fileobj(bucket, key, out)
        else:
            with open(source, "rb") as src, open(target, "wb") as out:
                while block := src.read(CHUNK_BYTES):
                    out.write(block)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - httpx, boto3 and OS errors alike: say what failed
        raise ModelError(f"cannot read {source}: {type(exc).__name__}: {exc}") from None


def fetch_model(source: str, dest: str, sha256: str | None = None, s3: Any = None) -> dict[str, Any]:
    """Fetch, verify and place one GGUF file (see the module docstring).

    Args:
        source: local path, ``http(s)://`` URL or ``s3://bucket/key``.
        dest: local path or ``s3://bucket/key``.
        sha256: expected hex SHA-256 (64 characters); ``None`` computes and reports it.
        s3: a boto3 S3 client (default: a new one, when S3 is involved).

    Returns:
        ``{"dest": str, "bytes": int, "sha256": str}``.

    Raises:
        ModelError: an unreadable source, a file that is not GGUF, or a SHA-256 mismatch.
    """
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise ModelError(f"--sha256 must be 64 hex characters, got {sha256!r}")
    sha256 = sha256.lower() if sha256 else None
    to_s3 = dest.startswith("s3://")
    # Check the destination before a download that may take minutes.
    if to_s3:
        bucket, key = _s3_parts(dest)
        workdir = Path(tempfile.gettempdir())
    else:
        if dest.endswith("/") or Path(dest).is_dir():
            raise ModelError(f"destination {dest} is a directory; name the file, e.g. {dest.rstrip('/')}/model.gguf")
        workdir = Path(dest).parent
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=".gguf.part", dir=workdir)
    except OSError as exc:
        raise ModelError(f"cannot write beside {dest}: {exc}") from None
    os.close(fd)
    partial = Path(name)
    try:
        fetch_to(source, partial, s3)
        check_model_file(partial, sha256)
        digest = sha256 or sha256_file(partial)
        size = partial.stat().st_size
        try:
            if to_s3:
                # boto3's managed transfer: multipart for large files, never the whole file in memory.
                _s3_client(s3).upload_file(str(partial), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
            else:
                os.replace(partial, dest)
        except Exception as exc:  # noqa: BLE001 - boto3 and OS errors alike: say what failed
            raise ModelError(f"cannot write {dest}: {type(exc).__name__}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return {"dest": dest, "bytes": size, "sha256": digest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="local path, http(s):// URL or s3://bucket/key of a .gguf file")
    parser.add_argument("dest", help="local path (e.g. /opt/models/model.gguf) or s3://bucket/key")
    parser.add_argument("--sha256", help="expected SHA-256 (hex); refused on mismatch")
    args = parser.parse_args(argv)
    if not args.sha256:
        print(
            "warning: no --sha256: only the GGUF magic bytes are checked, so a download cut short by a "
            "server that sent no Content-Length would pass; check the printed SHA-256 against the publisher's",
            file=sys.stderr,
        )
    try:
        print(json.dumps(fetch_model(args.source, args.dest, args.sha256)))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
