"""A small stand-in GGUF file for the model-fetching tests (layers/model/fetch_model.py): the
right magic bytes, 16 KiB of content, and its SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

GGUF = b"GGUF" + bytes(range(256)) * 64
DIGEST = hashlib.sha256(GGUF).hexdigest()


def write_gguf(directory: Path) -> Path:
    """``directory/src/model.gguf`` holding :data:`GGUF`."""
    path = directory / "src" / "model.gguf"
    path.parent.mkdir()
    path.write_bytes(GGUF)
    return path
