"""``GET``/``HEAD /v1/configs/{name}``: files from the config store with HTTP caching done right.

:func:`serve` is the whole behaviour, independent of the event source: the config function
(API Gateway v1 and v2, Function URLs; ``functions/config``), its Lambda@Edge variant
(:mod:`r1edge.configfiles.cloudfront`) and the local stack all call it. It returns plain
:class:`ConfigResponse` values; errors are :class:`~r1edge.protocol.errors.OpenAIError` subclasses.

Environment (:meth:`ConfigSettings.from_env`): ``CONFIG_BUCKET``, ``CONFIG_PREFIX`` (prepended to
every name, e.g. ``configs/``), ``CONFIG_CACHE_POLICIES`` (JSON: name prefix →
:class:`~r1edge.configfiles.httpcache.CachePolicy` fields), ``CONFIG_MAX_AGE`` (seconds a container serves its
copy before revalidating with S3, default 60), ``CONFIG_CACHE_DIR`` (the ``/tmp`` copy, default
``/tmp/r1edge-configs``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1edge import env
from r1edge.configfiles.httpcache import CachePolicy, http_date, not_modified, policy_for
from r1edge.configfiles.store import ConfigStore, S3Source
from r1edge.headers import AGE, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED
from r1edge.protocol.errors import ConfigError, InvalidRequest, MethodNotAllowed, NotFound, quote

ROUTE_PREFIX = "/v1/configs/"
#: A name: segments of letters, digits, ``.``, ``_`` and ``-`` joined by ``/``, none starting with
#: ``.`` (so no ``.``/``..`` segment and no hidden file), at most 256 characters.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
MAX_NAME_LENGTH = 256
CONTENT_TYPES = {
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".gguf": "application/octet-stream",
}


class ConfigSettings(BaseModel):
    """Where configs live and how they are cached (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=1)
    prefix: str = ""
    policies: dict[str, CachePolicy] = {}
    default_policy: CachePolicy = CachePolicy()
    max_age: float = Field(60.0, ge=0)
    cache_dir: str | None = "/tmp/r1edge-configs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConfigSettings:
        """Read the settings from the environment.

        Raises:
            ConfigError: ``CONFIG_BUCKET`` unset, or a malformed value (named).
        """
        environ = os.environ if environ is None else environ
        try:
            return cls(
                bucket=environ.get(env.CONFIG_BUCKET, ""),
                prefix=environ.get(env.CONFIG_PREFIX, ""),
                policies=json.loads(environ.get(env.CONFIG_CACHE_POLICIES) or "{}"),
                max_age=float(environ.get(env.CONFIG_MAX_AGE, "60")),
                cache_dir=environ.get(env.CONFIG_CACHE_DIR, "/tmp/r1edge-configs") or None,
            )
        except (ValidationError, ValueError) as exc:
            raise ConfigError(f"config function settings: {exc}") from None


@dataclass
class ConfigResponse:
    """An HTTP answer: status, headers (canonical capitalisation) and body bytes."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def validate_name(raw: str) -> str:
    """The config name from the path after ``/v1/configs/``, percent-decoded once.

    Raises:
        InvalidRequest: empty, too long, a leading ``/``, a ``.``/``..`` segment, a control
            character, a backslash, or anything still percent-encoded after one decoding (a
            double-encoded traversal); nothing of the kind ever reaches S3.
    """
    try:
        name = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        name = ""
    if not name or len(name) > MAX_NAME_LENGTH or NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"Invalid config name {quote(raw, 80)}: use letters, digits, '.', '_', '-' and '/' between "
            "segments; no leading '/', no '.' or '..' segment, no encoded characters.",
            param="name",
            code="invalid_config_name",
        )
    return name


def content_type(name: str) -> str:
    """The ``Content-Type`` for a name, by extension (JSON, YAML, text; binary otherwise)."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def serve(
    store: ConfigStore,
    settings: ConfigSettings,
    method: str,
    raw_name: str,
    headers: Mapping[str, str],
    clock: Callable[[], float] = time.time,
) -> ConfigResponse:
    """Answer ``GET`` or ``HEAD /v1/configs/{raw_name}``.

    Args:
        store: the cached config store.
        settings: prefix and cache policies.
        method: the HTTP method.
        raw_name: the path after ``/v1/configs/`` as received.
        headers: request headers; names are matched case-insensitively.
        clock: seconds since the epoch, for ``Age``.

    Returns:
        200 with the file (``HEAD``: no body), or 304 with ``ETag``, ``Cache-Control`` and
        ``Last-Modified`` and an empty body when a conditional request matches.

    Raises:
        MethodNotAllowed: not GET or HEAD.
        InvalidRequest: see :func:`validate_name`.
        NotFound: no such config.
        Overloaded: the store failed and no copy is usable (503, ``Retry-After``).
    """
    method = method.upper()
    if method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{quote(method)} is not allowed here; use GET or HEAD.", headers={ALLOW: "GET, HEAD"})
    name = validate_name(raw_name)
    policy = policy_for(name, settings.policies, settings.default_policy)
    try:
        obj = store.get(settings.prefix + name, stale_if_error=policy.stale_if_error or 0)
    except NotFound:
        raise NotFound(f"No config named {quote(name)}.") from None  # the bucket's prefix stays private
    lower = {k.lower(): v for k, v in headers.items()}
    out = {ETAG: obj.etag, CACHE_CONTROL: policy.header()}
    if obj.last_modified is not None:
        out[LAST_MODIFIED] = http_date(obj.last_modified)
    age = int(clock() - obj.fetched_at)
    if age > 0:
        out[AGE] = str(age)  # RFC 9111 §5.1: seconds since S3 last confirmed this copy
    if not_modified(lower, obj.etag, obj.last_modified):
        return ConfigResponse(304, out)
    out[CONTENT_TYPE] = content_type(name)
    out[CONTENT_LENGTH] = str(len(obj.body))
    return ConfigResponse(200, out, b"" if method == "HEAD" else obj.body)


def store_from_settings(settings: ConfigSettings, s3: object | None = None) -> ConfigStore:
    """A :class:`ConfigStore` over ``settings.bucket`` (S3 client created on first use)."""
    return ConfigStore(S3Source(settings.bucket, s3), max_age=settings.max_age, cache_dir=settings.cache_dir)
