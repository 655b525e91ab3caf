"""The OpenAI Embeddings request, checked the same way by the router and the edge server.

Rules from the OpenAI API reference, "Embeddings" (``POST /v1/embeddings``): ``input`` is a string
or an array of strings (r1edge takes no token arrays: the token ids of OpenAI's tokenizer mean
nothing to the edge model), which "cannot be an empty string, and any array must be 2048
dimensions or less"; ``encoding_format`` is ``float`` (the default) or ``base64`` (the vector's
little-endian float32 bytes, base64-encoded, which the official SDKs decode); ``dimensions`` is an
integer (checked against the model by the server, which cannot shorten its vectors); ``model``
and ``user`` are strings.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from r1edge.protocol.errors import InvalidRequest

#: Most strings one request may embed (OpenAI API reference, Embeddings: "any array must be 2048
#: dimensions or less").
MAX_INPUTS = 2048
ENCODING_FORMATS = frozenset({"float", "base64"})


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated embeddings request.

    Attributes:
        inputs: the strings to embed, in order (a single string becomes a list of one); 1 to
            :data:`MAX_INPUTS` items, none empty.
        encoding_format: ``float`` or ``base64``.
        dimensions: the vector length asked for, or ``None``.
        model: the ``model`` field as sent, or ``None``.
    """

    inputs: list[str]
    encoding_format: str
    dimensions: int | None
    model: str | None


def validate_embeddings_request(body: Any) -> EmbeddingsRequest:
    """Check a decoded JSON body against the Embeddings rules (module docstring).

    Raises:
        InvalidRequest: with ``param`` naming the field — the body is not an object; ``input``
            missing, empty, not a string or array of strings (token arrays included), an empty
            string among them, or more than :data:`MAX_INPUTS` items; ``encoding_format`` not
            ``float``/``base64``; ``dimensions`` not an integer >= 1; ``model``/``user`` not strings.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    raw = body.get("input")
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest(
            "'input' must be a string or an array of strings (token arrays are not supported).",
            param="input",
            code="invalid_type",
        )
    if not inputs:
        raise InvalidRequest("'input' must not be an empty array.", param="input", code="invalid_value")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(inputs)} items; at most {MAX_INPUTS} may be embedded in one request.",
            param="input",
            code="invalid_value",
        )
    for index, item in enumerate(inputs):
        if not item:
            param = "input" if isinstance(raw, str) else f"input[{index}]"
            raise InvalidRequest(f"'{param}' cannot be an empty string.", param=param, code="invalid_value")
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format", code="invalid_value"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidRequest("'dimensions' must be an integer >= 1.", param="dimensions", code="invalid_type")
    for name in ("model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    return EmbeddingsRequest(inputs, encoding_format, dimensions, body.get("model"))


def encode_base64(vector: list[float]) -> str:
    """A vector as OpenAI's ``encoding_format: base64`` sends it: its values as little-endian
    float32 (4 bytes each), base64-encoded (RFC 4648 §4, padded)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
