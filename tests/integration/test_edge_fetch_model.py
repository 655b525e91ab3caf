"""layers/model/fetch_model.py over real sockets and a real model: a GGUF file streamed from an HTTP
server on a free port, and the edge loading an S3 copy of the packaged model for real."""

from __future__ import annotations

import asyncio
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest
from fetch_model import fetch_model
from modelfiles import DIGEST, GGUF, write_gguf

from r1edge.edge.model import DEFAULT_MODEL_SHA256, ModelError, resolve_model_path
from r1edge.edge.runtime import LlamaRuntime

pytestmark = pytest.mark.integration


@pytest.fixture
def source(tmp_path) -> Path:
    return write_gguf(tmp_path)


@pytest.fixture
def s3(models_s3):
    return models_s3


def test_an_http_source_is_streamed_to_disk(source, tmp_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(source.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        dest = tmp_path / "model.gguf"
        assert fetch_model(f"{base}/model.gguf", str(dest), DIGEST)["sha256"] == DIGEST
        assert dest.read_bytes() == GGUF
        with pytest.raises(ModelError, match="404"):
            fetch_model(f"{base}/absent.gguf", str(tmp_path / "other.gguf"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_the_edge_loads_and_runs_a_model_uploaded_to_s3(tmp_path, s3):
    packaged = resolve_model_path()
    fetch_model(str(packaged), "s3://models/smollm2.gguf", DEFAULT_MODEL_SHA256, s3=s3)
    env = {
        "MODEL_URI": "s3://models/smollm2.gguf",
        "MODEL_SHA256": DEFAULT_MODEL_SHA256,
        "MODEL_CACHE_DIR": str(tmp_path),
    }
    path = resolve_model_path(env, image_path=tmp_path / "absent.gguf", s3=s3)
    assert path.parent == tmp_path
    runtime = LlamaRuntime(path, n_ctx=512)
    runtime.load()
    answer = asyncio.run(runtime.complete({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
    assert answer["usage"]["completion_tokens"] >= 1
    assert runtime.model_id == path.stem
