#!/usr/bin/env python3
"""Put a model's weights on the shared volume before the engine starts (the init container).

    r1-fetch-weights SOURCE DEST

SOURCE is ``hf://ORG/NAME[@REVISION]`` (the Hugging Face Hub, through ``huggingface_hub``, which
both engine images carry) or ``s3://BUCKET/PREFIX`` (object storage, through boto3, which the
image adds). DEST is a directory on the model volume, e.g. ``/models/deepseek-ai/DeepSeek-R1``.

Several replicas may start at once against one ReadWriteMany volume, so the work is done under
an exclusive lock (``DEST.lock``, ``fcntl.flock``; NFSv4/EFS/Lustre honour it): the first pod
downloads, the others wait and then find the weights complete. "Complete" is checked, not
assumed: ``config.json`` is there and every file named in the safetensors index (or at least one
``*.safetensors`` file when there is no index) exists and is not empty. Only then is the marker
``DEST/.r1edge-complete`` written, holding SOURCE; a later start with the same SOURCE and a
complete directory does nothing, so a restart costs seconds, not the ~690 GB download again.

Exit codes: 0 the weights are complete at DEST; 1 the download or the check failed (the message
says which file is missing); 2 bad arguments. Environment: ``HF_TOKEN`` for gated models,
``AWS_*`` / IRSA / Pod Identity credentials for S3, ``AWS_ENDPOINT_URL_S3`` for another S3 API.
Standard library only, apart from the client of the chosen source, imported when needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MARKER = ".r1edge-complete"
#: Files an engine needs from a Hugging Face model repository (weights, config, tokenizer, code).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


class FetchError(Exception):
    """The weights could not be fetched or are incomplete; the message names the cause."""


class SourceError(FetchError):
    """SOURCE is not ``hf://ORG/NAME[@REVISION]`` or ``s3://BUCKET/PREFIX`` (exit code 2)."""


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE: ``kind`` is ``hf`` or ``s3``; ``name`` the repo id or bucket;
    ``ref`` the revision (hf, default ``main``) or key prefix (s3, may be empty)."""

    kind: str
    name: str
    ref: str
    text: str


def parse_source(text: str) -> Source:
    """Parse ``hf://ORG/NAME[@REVISION]`` or ``s3://BUCKET/PREFIX``.

    Raises:
        SourceError: any other form.
    """
    parsed = urlparse(text)
    if parsed.scheme == "hf":
        repo, _, revision = (parsed.netloc + parsed.path).partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise SourceError(f"expected hf://ORG/NAME[@REVISION], got {text!r}")
        return Source("hf", repo, revision or "main", text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise SourceError(f"expected s3://BUCKET/PREFIX, got {text!r}")
        return Source("s3", parsed.netloc, parsed.path.lstrip("/"), text)
    raise SourceError(f"SOURCE must start with hf:// or s3://, got {text!r}")


def missing_files(dest: Path) -> list[str]:
    """What an engine would miss in ``dest``: ``[]`` when the weights are complete.

    The safetensors index (``model.safetensors.index.json``) names every shard; without an
    index, one ``*.safetensors`` file must exist. Empty files count as missing (a download cut
    short leaves them).
    """

    def absent(name: str) -> bool:
        path = dest / name
        return not path.is_file() or path.stat().st_size == 0

    missing = [name for name in ("config.json",) if absent(name)]
    index = dest / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return [*missing, "model.safetensors.index.json (unreadable)"]
        missing += [shard for shard in shards if absent(shard)]
    elif not any(p.stat().st_size > 0 for p in dest.glob("*.safetensors")):
        missing.append("*.safetensors")
    return missing


def is_complete(dest: Path, source: Source) -> bool:
    """True when ``dest`` holds this source's weights, checked (see :func:`missing_files`)."""
    marker = dest / MARKER
    return marker.is_file() and marker.read_text().strip() == source.text and not missing_files(dest)


def download_hf(source: Source, dest: Path) -> None:
    """Download a Hub repository into ``dest`` (resumes partial files)."""
    from huggingface_hub import snapshot_download  # in both engine images

    snapshot_download(repo_id=source.name, revision=source.ref, local_dir=str(dest), allow_patterns=ALLOW_PATTERNS)


def download_s3(source: Source, dest: Path, client: Any = None) -> None:
    """Copy every object under ``s3://name/ref`` into ``dest``, keeping the paths below the
    prefix; objects already there with the same size are skipped (a restarted copy resumes)."""
    if client is None:
        import boto3  # added by the Dockerfile

        client = boto3.client("s3")
    prefix = source.ref.rstrip("/") + "/" if source.ref else ""
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            found = True
            target = dest / relative
            if target.is_file() and target.stat().st_size == obj["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            client.download_file(source.name, obj["Key"], str(partial))
            partial.replace(target)
    if not found:
        raise FetchError(f"no objects under {source.text}")


def fetch(source: Source, dest: Path, downloaders: dict[str, Callable[[Source, Path], None]] | None = None) -> str:
    """Make ``dest`` hold ``source``'s weights; return ``"present"`` or ``"downloaded"``.

    Raises:
        FetchError: the download failed or left files missing.
    """
    downloaders = downloaders or {"hf": download_hf, "s3": download_s3}
    dest.mkdir(parents=True, exist_ok=True)
    if is_complete(dest, source):
        return "present"
    with open(dest.parent / (dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pod may be downloading the same weights
        if is_complete(dest, source):
            return "present"
        (dest / MARKER).unlink(missing_ok=True)
        try:
            downloaders[source.kind](source, dest)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub, boto3 and OS errors alike: say what failed
            raise FetchError(f"download of {source.text} failed: {type(exc).__name__}: {exc}") from None
        missing = missing_files(dest)
        if missing:
            raise FetchError(f"{source.text} → {dest}: incomplete, missing {', '.join(missing[:5])}")
        tmp = dest / (MARKER + ".tmp")
        tmp.write_text(source.text + "\n")
        os.replace(tmp, dest / MARKER)
    return "downloaded"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        source = parse_source(args[0])
        state = fetch(source, Path(args[1]))
    except FetchError as exc:
        print(f"r1-fetch-weights: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SourceError) else 1
    print(json.dumps({"source": source.text, "dest": args[1], "state": state}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
