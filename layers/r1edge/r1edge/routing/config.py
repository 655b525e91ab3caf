"""The routing configuration: endpoints, timeouts, retry and classifier settings.

Format (YAML or JSON) and field names are fixed by docs/ARCHITECTURE.md ("Local interfaces"). A document
holding only ``endpoints`` (each with ``name``, ``url``, ``tier``) is complete: every other field
has the default documented here and in the README. Unknown fields are refused, so a typo such as
``prioirty`` is an error that names the field rather than a setting silently ignored.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r1edge import env
from r1edge.aws.clients import make_client
from r1edge.protocol.errors import ConfigError, InvalidRequest
from r1edge.protocol.sse import MAX_JSON_DEPTH, MAX_SSE_LINE_BYTES
from r1edge.protocol.validation import ChatRequest, message_text
from r1edge.resilience.breaker import BreakerSettings

#: The public model name that lets the classifier choose the tier.
AUTO_MODEL = "auto"
#: Public model names a client may ask for, and the tier each one forces (``None``: the
#: classifier chooses). The one map of model names to tiers in the router.
MODEL_TIERS: dict[str, str | None] = {AUTO_MODEL: None, "edge": "edge", "deepseek-r1": "cluster"}
#: Each tier's public model name (the inverse of :data:`MODEL_TIERS`): ``edge`` → ``edge``,
#: ``cluster`` → ``deepseek-r1``.
TIER_MODELS: dict[str, str] = {tier: name for name, tier in MODEL_TIERS.items() if tier is not None}
TIERS = ("edge", "cluster")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Per-endpoint timeouts, in seconds (docs/ARCHITECTURE.md defaults: 5, 60, 60)."""

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    idle: float = Field(60.0, gt=0)


class Auth(_Strict):
    """How the router authenticates to an endpoint.

    ``type: none`` sends nothing. ``type: bearer`` sends ``Authorization: Bearer <token>``, the
    token read from the environment variable ``env`` (local use), or from the AWS Secrets Manager
    secret named ``secret`` through Powertools Parameters (cached, see :mod:`r1edge.routing.upstream`).
    ``type: sigv4`` signs each request with AWS Signature Version 4 for ``service`` (default
    ``lambda``, for a Function URL with ``AuthType: AWS_IAM``) in ``region`` (default
    ``AWS_REGION``), with the function's own credentials.
    """

    type: Literal["none", "bearer", "sigv4"] = "none"
    env: str | None = None
    secret: str | None = None
    service: str = "lambda"
    region: str | None = None

    @model_validator(mode="after")
    def _bearer_needs_source(self) -> Auth:
        if self.type == "bearer" and not (self.env or self.secret):
            raise ValueError("auth type 'bearer' needs 'env' (an environment variable) or 'secret' (a secret name)")
        return self


#: Largest JSON answer read from an upstream by default (bytes): 8 MiB, far above any chat
#: completion (32,768 tokens of text are well under 1 MiB).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class Endpoint(_Strict):
    """One OpenAI-compatible upstream.

    Attributes:
        name: unique name, reported in ``x-r1edge-upstream``.
        url: base URL ending in the API root, e.g. ``http://127.0.0.1:8001/v1``.
        tier: ``edge`` or ``cluster``.
        priority: lower is tried first within the tier (default 0).
        weight: relative share among endpoints of equal priority (default 1).
        region: free-form label (e.g. ``us-east-1``).
        model: model name sent upstream; when absent, the public name of the tier
            (:data:`TIER_MODELS`: ``edge`` or ``deepseek-r1``) is sent.
        auth: see :class:`Auth`.
        timeouts: see :class:`Timeouts`.
        max_concurrency: requests in flight to this endpoint from one router process beyond
            which it is skipped (``None``: no limit).
        metrics: read the engine's load from its ``/metrics`` (vLLM or SGLang) and skip the
            endpoint while the load is at or over ``load.target``.
        max_response_bytes: a JSON answer larger than this (bytes, after content-encoding is
            undone; a ``Content-Length`` over it is refused unread) is a failed attempt, and no
            more of it is read (default :data:`MAX_RESPONSE_BYTES`, 8 MiB).
        max_sse_line_bytes: an SSE line, or the data of one event, longer than this (bytes) is a
            failed attempt (before content) or truncates the stream (after); nothing more of it
            is read (default :data:`~r1edge.protocol.sse.MAX_SSE_LINE_BYTES`, 1 MiB).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    url: str
    tier: Literal["edge", "cluster"]
    priority: int = 0
    weight: float = Field(1.0, gt=0)
    region: str | None = None
    model: str | None = None
    auth: Auth = Auth()
    timeouts: Timeouts = Timeouts()
    max_concurrency: int | None = Field(None, ge=1)
    metrics: bool = False
    max_response_bytes: int = Field(MAX_RESPONSE_BYTES, ge=1024)
    max_sse_line_bytes: int = Field(MAX_SSE_LINE_BYTES, ge=1024)

    @property
    def metrics_url(self) -> str:
        """The engine's Prometheus endpoint: the server root's ``/metrics`` (vLLM, SGLang)."""
        return self.url.removesuffix("/v1") + "/metrics"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8001/v1")
        if parsed.query or parsed.fragment:
            raise ValueError("must be a base URL without ?query or #fragment")
        return value.rstrip("/")

    @property
    def upstream_model(self) -> str:
        """The ``model`` value sent to this endpoint."""
        return self.model or TIER_MODELS[self.tier]


class Retry(_Strict):
    """Retry settings; times in seconds (issue "Keep answering when upstreams fail" uses them)."""

    max_attempts: int = Field(4, ge=1)
    backoff_base: float = Field(0.25, ge=0)
    backoff_cap: float = Field(8.0, ge=0)


class Load(_Strict):
    """Load-aware admission (see :mod:`r1edge.resilience.load`): a fraction, and seconds."""

    target: float = Field(0.7, gt=0, le=1)
    max_age: float = Field(5.0, gt=0)


class Health(_Strict):
    """Active health checks (see :mod:`r1edge.observe.health`); all times in seconds.

    Attributes:
        interval: between probe rounds (30, the brief's "health checks every 30 s").
        timeout: for the cheap check (``GET /models``) and the ``/metrics`` read.
        completion_interval: between 1-token completion probes of an endpoint (0: never).
        completion_timeout: for that completion.
        stale_after: the router ignores records older than this (three probe periods).
        max_age: how long the router reuses one read of the health table.
        ttl: records expire from the table (DynamoDB TTL) this long after their probe.
    """

    interval: float = Field(30.0, gt=0)
    timeout: float = Field(5.0, gt=0)
    completion_interval: float = Field(300.0, ge=0)
    completion_timeout: float = Field(20.0, gt=0)
    stale_after: float = Field(90.0, gt=0)
    max_age: float = Field(5.0, ge=0)
    ttl: float = Field(600.0, gt=0)


class Latency(_Strict):
    """Latency-based switching (see :mod:`r1edge.resilience.balancer`): seconds and a fraction."""

    threshold: float = Field(0.5, gt=0)
    hysteresis: float = Field(0.8, gt=0, le=1)


class Cascade(_Strict):
    """Confidence-based escalation of ``model: auto`` requests from the edge to the cluster
    (see :mod:`r1edge.routing.cascade`).

    Attributes:
        threshold: edge answers whose confidence (geometric mean token probability, 0 to 1)
            is under this go to the cluster; ``null`` turns the cascade off. The default, 0.4,
            is calibrated on the packaged SmolLM2-135M (``make bench``, bench_cascade.py);
            calibrate it again for your edge model.
        stream_window: tokens the edge generates before a streamed answer starts, to judge
            it (0: streams are not cascaded). Each token adds to the time to first token.
    """

    threshold: float | None = Field(0.4, ge=0, le=1)
    stream_window: int = Field(8, ge=0, le=256)


class Cache(_Strict):
    """The exact response cache (see :mod:`r1edge.cache.response`).

    Attributes:
        enabled: look answers up and store them (default on; only deterministic requests are
            cached unless ``nondeterministic_models`` widens it).
        ttl: seconds an entry is served after it was stored (default 3600).
        l1_size_limit: bytes the per-container diskcache in ``/tmp`` may hold before it evicts
            the least recently used entries (default 256 MiB; Lambda's ``/tmp`` is 512 MB to
            10 GB).
        l2: also use the shared DynamoDB table ``table`` (default off).
        table: DynamoDB table name of the L2 cache (partition key ``key``, TTL attribute
            ``expires_at``).
        nondeterministic_models: public model names (``auto``, ``edge``, ``deepseek-r1``) whose
            requests are cached even without ``temperature: 0`` or a ``seed`` — e.g.
            ``deepseek-r1`` when it is DeepSeek's ``deepseek-reasoner``, which ignores
            ``temperature``. For ``auto``, the tier the request resolves to also counts
            (``edge`` or ``deepseek-r1``).
    """

    enabled: bool = True
    ttl: float = Field(3600.0, gt=0)
    l1_size_limit: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    l2: bool = False
    table: str = Field("r1edge-cache", min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    nondeterministic_models: list[str] = Field(default_factory=list)

    @field_validator("nondeterministic_models")
    @classmethod
    def _public_models(cls, models: list[str]) -> list[str]:
        for name in models:
            if name not in MODEL_TIERS:
                raise ValueError(f"unknown model {name!r}; use public model names: {', '.join(MODEL_TIERS)}")
        return models


DEFAULT_PATTERNS: dict[str, list[str]] = {
    "math": [
        r"\b(prove|proof|theorem|lemma|integral|integrate|derivative|differentiate|equations?|inequality)\b",
        r"\b(probability|remainder|divisible|polynomial|matrix|matrices|eigen\w*|logarithm|factorial)\b",
        r"\b(vertices|triangle|geometry|algebra|calculus|arithmetic|solve for|express \w+ in)\b",
        r"\w\s*[=<>^]\s*\w*\d|\d\s*[-+*/^]\s*\d",
    ],
    "code": [
        r"```",
        r"\b(python|javascript|typescript|java|golang|rust|sql|html|css|bash|regex|c\+\+|c#)(?!\w)",
        r"\b(function|program|implement|algorithm|source code|code|debug|bug|compile|recursion|recursive)\b",
        r"\b(array|linked list|binary tree|hash map|time complexity|space complexity|O\(\w+\))",
    ],
    "reasoning": [
        r"\bstep[- ]by[- ]step\b",
        r"\b(reasons?|reasoning|riddle|puzzle|logic|logical|deduce|infer|paradox)\b",
        r"\b(how many|what is the relationship|does not belong|true, false, or uncertain|which direction)\b",
    ],
}


class Classifier(_Strict):
    """Thresholds and word lists for ``model: auto`` (see :mod:`r1edge.routing.classifier`).

    Attributes:
        max_prompt_tokens: estimated prompt tokens above this go to the cluster.
        max_output_tokens: a requested ``max_tokens`` above this goes to the cluster.
        max_turns: more user turns than this goes to the cluster.
        edge_context_tokens: the edge model's context window (tokens); a prompt plus its
            completion budget that does not fit goes to the cluster.
        default_completion_tokens: completion budget assumed when ``max_tokens`` is absent.
        chars_per_token: characters per token for the estimate (no tokenizer in the router).
        patterns: category → regular expressions (case-insensitive) that mark a heavy prompt.
    """

    max_prompt_tokens: int = Field(1024, ge=1)
    max_output_tokens: int = Field(1024, ge=1)
    max_turns: int = Field(6, ge=1)
    edge_context_tokens: int = Field(2048, ge=1)
    default_completion_tokens: int = Field(256, ge=0)
    chars_per_token: float = Field(4.0, gt=0)
    patterns: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_PATTERNS.items()})

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, list[str]]) -> dict[str, list[str]]:
        for category, group in patterns.items():
            for pattern in group:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"pattern {pattern!r} in {category!r} is not a valid regular expression: {exc}"
                    ) from None
        return patterns


class TierLimits(_Strict):
    """Input caps for requests answered by one tier (checked once the tier is chosen, before any
    upstream call; see :func:`check_tier_limits`).

    Attributes:
        max_messages: most messages in ``messages``.
        max_content_chars: most characters of message text, all messages together.
        max_tokens: largest ``max_tokens``/``max_completion_tokens`` accepted (tokens).
        max_n: largest ``n`` (choices generated per request) accepted. Each choice is a whole
            generation of up to ``max_tokens`` tokens, so ``n`` multiplies a request's GPU time
            and its token charge (:func:`r1edge.access.charging.admit_chat`).
    """

    max_messages: int = Field(1000, ge=1)
    max_content_chars: int = Field(1_000_000, ge=1)
    max_tokens: int = Field(32768, ge=1)
    max_n: int = Field(8, ge=1)


class InputLimits(_Strict):
    """:class:`TierLimits` per tier. The edge's ``max_tokens`` default (4096) is twice its
    default context window; the cluster's (32768) is DeepSeek-R1's longest answer. The edge's
    ``max_n`` default is 1: the edge model server generates one choice
    (:func:`r1edge.edge.app.completion_kwargs` refuses any other ``n``); the cluster's is 8."""

    edge: TierLimits = TierLimits(max_tokens=4096, max_n=1)
    cluster: TierLimits = TierLimits()

    def for_tier(self, tier: str) -> TierLimits:
        return self.edge if tier == "edge" else self.cluster


class RoutingConfig(_Strict):
    """The whole routing configuration.

    Attributes:
        endpoints: at least one :class:`Endpoint`; names are unique.
        deadline: seconds one request may take end to end, locally (default 300).
        retry: :class:`Retry` settings.
        breaker: :class:`~r1edge.resilience.breaker.BreakerSettings` (the breakers' own settings
            class, used here as it is).
        latency: :class:`Latency` settings.
        load: :class:`Load` settings.
        health: :class:`Health` settings (active health checks and how the router trusts them).
        allow_degrade: when the cluster tier cannot answer (every endpoint failing, open or
            over its load target), ``auto`` requests are answered by the edge instead; a request
            may also ask for it with ``x-r1edge-allow-degrade: true`` (the only way for
            ``deepseek-r1``).
        keepalive_interval: seconds between ``: keep-alive`` comments while a stream waits for
            its first token (default 5; CloudFront's default read timeout is 30 s).
        classifier: :class:`Classifier` settings.
        cascade: :class:`Cascade` settings.
        max_body_bytes: request bodies larger than this (bytes, as received, before parsing) are
            refused with 413 (default 1 MiB).
        max_json_depth: request bodies nested more than this many levels of arrays and objects
            are refused with 400 ``json_too_deep`` (default 64; the body object is level 1), and
            upstream answers (JSON bodies, SSE events) nested deeper are failed attempts. Held
            between 16 (a completion with ``logprobs`` nests 9) and 256 (so the recursive code
            behind the check, ``copy.deepcopy`` and the cache key's normalisation among it,
            stays far from Python's recursion limit of 1000 frames).
        limits: :class:`InputLimits`: message count, text length and ``max_tokens`` per tier.
        forward_fields: request fields forwarded upstream besides OpenAI's own
            (:data:`r1edge.protocol.validation.FORWARDED_FIELDS`); any other unknown field is accepted
            and dropped.
        cache: :class:`Cache` settings.
        aliases: model names clients use of their own accord → the public model name each one
            routes as (``{"claude-sonnet-4-5": "auto"}``); read by the Anthropic Messages API
            (:mod:`r1edge.dialects.anthropic`). Targets must be public names
            (:data:`MODEL_TIERS`), and no alias may be a public name itself.
    """

    endpoints: list[Endpoint] = Field(min_length=1)
    deadline: float = Field(300.0, gt=0)
    retry: Retry = Retry()
    breaker: BreakerSettings = BreakerSettings()
    latency: Latency = Latency()
    load: Load = Load()
    health: Health = Health()
    allow_degrade: bool = False
    keepalive_interval: float = Field(5.0, gt=0)
    classifier: Classifier = Classifier()
    cascade: Cascade = Cascade()
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    max_json_depth: int = Field(MAX_JSON_DEPTH, ge=16, le=256)
    limits: InputLimits = InputLimits()
    forward_fields: list[str] = Field(default_factory=list)
    cache: Cache = Cache()
    aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("aliases")
    @classmethod
    def _public_targets(cls, aliases: dict[str, str]) -> dict[str, str]:
        for name, target in aliases.items():
            if name in MODEL_TIERS:
                raise ValueError(f"alias {name!r} is a public model name already")
            if target not in MODEL_TIERS:
                raise ValueError(f"alias {name!r} → {target!r}: use public model names: {', '.join(MODEL_TIERS)}")
        return aliases

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: list[Endpoint]) -> list[Endpoint]:
        seen: set[str] = set()
        for endpoint in endpoints:
            if endpoint.name in seen:
                raise ValueError(f"endpoint name {endpoint.name!r} is used twice; names must be unique")
            seen.add(endpoint.name)
        return endpoints

    def tier_endpoints(self, tier: str) -> list[Endpoint]:
        """Endpoints of one tier, lowest ``priority`` first (stable for equal priorities)."""
        return sorted((e for e in self.endpoints if e.tier == tier), key=lambda e: e.priority)

    def served_models(self) -> list[str]:
        """Public model names with at least one endpoint behind them (``auto`` when any)."""
        tiers = {e.tier for e in self.endpoints}
        return [name for name, tier in MODEL_TIERS.items() if tier is None or tier in tiers]


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(document)"


#: Environment variables that override single values of a loaded config (docs/ARCHITECTURE.md: "Environment
#: variables override single values").
ENV_OVERRIDES = {
    env.R1EDGE_DEADLINE: ("deadline",),
    env.R1EDGE_MAX_BODY_BYTES: ("max_body_bytes",),
    env.R1EDGE_CACHE_ENABLED: ("cache", "enabled"),
    env.R1EDGE_CACHE_TTL: ("cache", "ttl"),
    env.R1EDGE_CACHE_L2: ("cache", "l2"),
    env.R1EDGE_CACHE_TABLE: ("cache", "table"),
}


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    """Set ``data[path[0]][path[1]]… = value``, copying the nested mappings on the way (the
    caller's document is never changed); a section that is not a mapping is left for the
    validation to report."""
    *parents, last = path
    for key in parents:
        section = data.get(key)
        if section is None:
            section = {}
        elif not isinstance(section, dict):
            return
        data[key] = section = dict(section)
        data = section
    data[last] = value


def parse_config(data: Any, environ: dict[str, str] | None = None) -> RoutingConfig:
    """Validate a decoded config document and apply environment overrides.

    Args:
        data: the decoded YAML/JSON document (a mapping).
        environ: environment to read overrides from (default ``os.environ``).

    Raises:
        ConfigError: naming every bad field, e.g. ``endpoints[1].tier: Input should be 'edge'
            or 'cluster' (got 'gpu')``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"routing config must be a mapping with an 'endpoints' list, got {type(data).__name__}")
    environ = os.environ if environ is None else environ
    data = dict(data)
    for var, path in ENV_OVERRIDES.items():
        if environ.get(var):
            _set_path(data, path, environ[var])
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            got = f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") else ""
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(f"{_field_path(err['loc'])}: {message}{got}")
        raise ConfigError("invalid routing config: " + "; ".join(problems)) from None


def load_config(source: str, environ: dict[str, str] | None = None) -> RoutingConfig:
    """Load and validate a routing config from a file path, ``s3://bucket/key``, or an inline
    JSON document (a value starting with ``{``, as ``template.yaml`` passes it in an environment
    variable).

    YAML and JSON are both accepted (JSON is YAML). S3 objects are read with a client from
    :func:`r1edge.aws.clients.make_client`, which takes ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
    from the environment (moto locally).

    Raises:
        ConfigError: the source cannot be read, is not YAML/JSON, or fails validation.
    """
    try:
        if source.lstrip().startswith("{"):
            text, source = source, "(inline)"
        elif source.startswith("s3://"):
            text = _read_s3(source)
        else:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read routing config {source!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing config {source!r} is not valid YAML or JSON: {exc}") from None
    return parse_config(data, environ)


def _read_s3(uri: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError  # lazy: only S3-backed configs need it

    parsed = urlparse(uri)
    if not parsed.netloc or not parsed.path.lstrip("/"):
        raise ConfigError(f"routing config URI must look like s3://bucket/key, got {uri!r}")
    try:
        obj = make_client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return obj["Body"].read().decode("utf-8")
    except (BotoCoreError, ClientError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read routing config {uri!r}: {exc}") from None


def dump_config(config: RoutingConfig) -> str:
    """Serialize a config as JSON (valid YAML too), e.g. for the local stack's generated file."""
    return json.dumps(config.model_dump(mode="json", exclude_defaults=True), indent=2)


def config_from_env(environ: dict[str, str] | None = None) -> RoutingConfig:
    """Load the routing config named by ``R1EDGE_CONFIG``.

    Raises:
        ConfigError: the variable is unset, or the config is unreadable or invalid.
    """
    environ = os.environ if environ is None else environ
    source = environ.get(env.R1EDGE_CONFIG)
    if not source:
        raise ConfigError("R1EDGE_CONFIG is not set: point it at a routing config file or s3://bucket/key")
    return load_config(source, environ)


def check_tier_limits(request: ChatRequest, limits: TierLimits, tier: str) -> None:
    """Hold a request to the caps of the tier chosen for it (routing config ``limits``).

    Raises:
        InvalidRequest: ``messages`` longer than ``max_messages`` (code ``array_above_max_length``);
            message text over ``max_content_chars`` characters in all (``string_above_max_length``,
            ``param`` naming the message that crosses the cap); ``max_tokens`` (or
            ``max_completion_tokens``) over ``max_tokens`` (``invalid_value``); ``n`` over
            ``max_n`` (``param: "n"``, ``invalid_value``).
    """
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            f"'messages' has {len(request.messages)} messages; the {tier} tier takes at most {limits.max_messages}.",
            param="messages",
            code="array_above_max_length",
        )
    total = 0
    for i, message in enumerate(request.messages):
        total += len(message_text(message))
        if total > limits.max_content_chars:
            raise InvalidRequest(
                f"The messages hold more than {limits.max_content_chars} characters of text, the {tier} tier's limit.",
                param=f"messages[{i}].content",
                code="string_above_max_length",
            )
    if request.max_tokens is not None and request.max_tokens > limits.max_tokens:
        name = "max_completion_tokens" if request.body.get("max_completion_tokens") is not None else "max_tokens"
        raise InvalidRequest(
            f"'{name}' is too large: {request.max_tokens}. The {tier} tier supports at most {limits.max_tokens} "
            "completion tokens.",
            param=name,
            code="invalid_value",
        )
    n = request.body.get("n")  # validated: a JSON integer >= 1, or absent/null
    if n is not None and n > limits.max_n:
        raise InvalidRequest(
            f"'n' is too large: {n}. The {tier} tier generates at most {limits.max_n} "
            f"choice{'s' if limits.max_n != 1 else ''} per request.",
            param="n",
            code="invalid_value",
        )
