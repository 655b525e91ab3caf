"""API keys: who may call the router, the tenant each key acts for, and the key's limits.

A key is a random string (``r1e-`` + 43 URL-safe characters, 256 bits) that exists in clear only
on the client's side: the keys table (DynamoDB, partition key ``key_hash``) holds its keyed hash,
HMAC-SHA-256 (RFC 2104) under a secret from AWS Secrets Manager read through Powertools
Parameters (cached :data:`SECRET_MAX_AGE` seconds). A stolen table therefore yields no usable
key, and without the secret no one can test guesses against it offline. The stored hash is
compared with the computed one in constant time (:func:`hmac.compare_digest`).

Item: ``{key_hash, key_id, tenant, status ("active" | "revoked"), requests_per_minute,
tokens_per_minute, hint, created}``. ``key_id`` (``key_`` + 12 hex characters of the hash) and
``hint`` (``r1e-…`` + the key's last 4 characters) name a key in listings without revealing it.

Command line (``make keys ARGS="…"``)::

    python -m r1edge.access.keys create --tenant acme [--rpm 60] [--tpm 100000] [--key KEY]
    python -m r1edge.access.keys list
    python -m r1edge.access.keys revoke key_0123456789ab

``create`` prints the new key once; it is not stored anywhere in clear. The table and the secret
come from ``R1EDGE_KEYS_TABLE`` and ``R1EDGE_KEYS_SECRET`` (or ``--table``/``--secret``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from r1edge import env
from r1edge.aws.ddb import Table
from r1edge.headers import AUTHORIZATION, X_API_KEY
from r1edge.protocol.errors import OpenAIError

#: Seconds Powertools Parameters caches the HMAC secret in a container.
SECRET_MAX_AGE = 300
#: Prefix of every key this module issues (keys given verbatim, e.g. the development key, may differ).
KEY_PREFIX = "r1e-"
#: Longest key accepted (characters); longer ones are refused without a table lookup.
MAX_KEY_LENGTH = 256
#: Limits of a key created without explicit ones.
DEFAULT_REQUESTS_PER_MINUTE = 60
DEFAULT_TOKENS_PER_MINUTE = 100_000

#: The keys table's schema, shared by ``template.yaml`` (a test compares them) and the local stack.
KEYS_TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "key_hash", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "key_hash", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


class InvalidApiKey(OpenAIError):
    """401 ``invalid_request_error`` / ``invalid_api_key``: no key, an unknown key, or a revoked
    one (OpenAI API reference, "Error codes": 401 Invalid Authentication)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the key itself).

    Attributes:
        key_hash: hex HMAC-SHA-256 of the key.
        key_id: public name of the key (``key_`` + 12 hex characters).
        tenant: the tenant the key acts for.
        status: ``"active"`` or ``"revoked"``.
        requests_per_minute: request limit (token bucket capacity, refilled over 60 s).
        tokens_per_minute: token limit (prompt + completion tokens).
        hint: ``r1e-…abcd``, for people to recognise their key.
        created: ISO 8601 UTC time of creation.
    """

    key_hash: str
    key_id: str
    tenant: str
    status: str = "active"
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE
    tokens_per_minute: int = DEFAULT_TOKENS_PER_MINUTE
    hint: str = ""
    created: str = ""

    def item(self) -> dict[str, Any]:
        """The DynamoDB item."""
        return {
            "key_hash": self.key_hash,
            "key_id": self.key_id,
            "tenant": self.tenant,
            "status": self.status,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "hint": self.hint,
            "created": self.created,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ApiKey:
        """Read an item (DynamoDB numbers arrive as ``Decimal``)."""
        return cls(
            key_hash=str(item["key_hash"]),
            key_id=str(item.get("key_id", "")),
            tenant=str(item["tenant"]),
            status=str(item.get("status", "active")),
            requests_per_minute=int(item.get("requests_per_minute", DEFAULT_REQUESTS_PER_MINUTE)),
            tokens_per_minute=int(item.get("tokens_per_minute", DEFAULT_TOKENS_PER_MINUTE)),
            hint=str(item.get("hint", "")),
            created=str(item.get("created", "")),
        )


def hash_key(key: str, secret: str | bytes) -> str:
    """Hex HMAC-SHA-256 (RFC 2104) of ``key`` under ``secret``."""
    secret_bytes = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(secret_bytes, key.encode("utf-8"), hashlib.sha256).hexdigest()


def new_key() -> str:
    """A new random key: :data:`KEY_PREFIX` + 256 bits, URL-safe base64 (``secrets`` module)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id_of(key_hash: str) -> str:
    """The public id of a key: ``key_`` + the first 12 hex characters of its hash."""
    return "key_" + key_hash[:12]


def hint_of(key: str) -> str:
    """``r1e-…abcd``: the key's prefix and last 4 characters (shown in listings)."""
    return f"{key[:4]}…{key[-4:]}" if len(key) > 12 else "…"


class KeyStore(Protocol):
    """Storage of :class:`ApiKey` items, by ``key_hash``."""

    def get(self, key_hash: str) -> ApiKey | None: ...

    def put(self, key: ApiKey) -> None: ...

    def all(self) -> list[ApiKey]: ...

    def set_status(self, key_hash: str, status: str) -> None: ...


class DynamoKeyStore:
    """:class:`KeyStore` on a DynamoDB table (:data:`KEYS_TABLE_SCHEMA`).

    The client is created on first use and takes ``AWS_ENDPOINT_URL_DYNAMODB`` from the
    environment (a moto server locally). Reads are strongly consistent, so a revocation holds at
    once.

    Args:
        table_name: the table name.
        client: a DynamoDB low-level client or :class:`~r1edge.aws.clients.LazyClient` (tests
            inject moto's); default: one made on first use (:class:`r1edge.aws.ddb.Table`).
    """

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self.table = Table(table_name, client)

    def get(self, key_hash: str) -> ApiKey | None:
        item = self.table.get_item(Key={"key_hash": key_hash}, ConsistentRead=True).get("Item")
        return ApiKey.from_item(item) if item else None

    def put(self, key: ApiKey) -> None:
        self.table.put_item(Item=key.item())

    def all(self) -> list[ApiKey]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.table.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted((ApiKey.from_item(i) for i in items), key=lambda k: (k.tenant, k.created))

    def set_status(self, key_hash: str, status: str) -> None:
        self.table.update_item(
            Key={"key_hash": key_hash},
            UpdateExpression="SET #s = :s",
            ConditionExpression="attribute_exists(key_hash)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": status},
        )


def read_secret(name: str) -> str:
    """The HMAC secret: Secrets Manager through Powertools Parameters, cached
    :data:`SECRET_MAX_AGE` seconds per container."""
    from aws_lambda_powertools.utilities.parameters import get_secret  # lazy: boto3 client on first use

    value = get_secret(name, max_age=SECRET_MAX_AGE)
    return value if isinstance(value, str) else bytes(value).decode()


def bearer_key(headers: Any) -> str | None:
    """The API key a request carries: ``Authorization: Bearer <key>`` (scheme case-insensitive,
    RFC 9110 section 11.1), else ``x-api-key: <key>``. ``headers`` is any case-insensitive
    mapping (Starlette ``Headers``); header names are matched case-insensitively by it."""
    authorization = (headers.get(AUTHORIZATION) or "").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = (headers.get(X_API_KEY) or "").strip()
    return key or None


class Authenticator:
    """Turns the key a request carries into its :class:`ApiKey`.

    Args:
        store: where keys are looked up.
        secret: ``() -> secret`` for the HMAC (default: Secrets Manager via :func:`read_secret`).
    """

    def __init__(self, store: KeyStore, secret: Callable[[], str | bytes]) -> None:
        self.store = store
        self.secret = secret

    def authenticate(self, key: str | None) -> ApiKey:
        """The active key record for ``key``.

        Raises:
            InvalidApiKey: no key, a key longer than :data:`MAX_KEY_LENGTH`, an unknown key, or a
                revoked one. The message never repeats the key.
        """
        if not key:
            raise InvalidApiKey(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        if len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidApiKey("Incorrect API key provided.")
        digest = hash_key(key, self.secret())
        record = self.store.get(digest)
        if record is None or not hmac.compare_digest(record.key_hash.encode(), digest.encode()):
            raise InvalidApiKey("Incorrect API key provided.")
        if record.status != "active":
            raise InvalidApiKey(f"The API key {record.key_id} has been revoked.")
        return record


def create_key(
    store: KeyStore,
    secret: str | bytes,
    tenant: str,
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    tokens_per_minute: int = DEFAULT_TOKENS_PER_MINUTE,
    key: str | None = None,
    now: datetime | None = None,
) -> tuple[str, ApiKey]:
    """Create (or, for a given ``key``, replace) a key for ``tenant``; return ``(key, record)``.
    The key itself is returned once and stored only as its hash.

    Raises:
        ValueError: an empty tenant, limits under 1, or a given key that is empty or too long.
    """
    if not tenant:
        raise ValueError("tenant must not be empty")
    if requests_per_minute < 1 or tokens_per_minute < 1:
        raise ValueError("limits must be at least 1 per minute")
    key = new_key() if key is None else key
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValueError(f"a key must be 1 to {MAX_KEY_LENGTH} printable characters")
    digest = hash_key(key, secret)
    record = ApiKey(
        key_hash=digest,
        key_id=key_id_of(digest),
        tenant=tenant,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        hint=hint_of(key),
        created=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
    )
    store.put(record)
    return key, record


def revoke_key(store: KeyStore, key_id: str) -> ApiKey:
    """Mark the key named ``key_id`` revoked (it then gets 401 at once).

    Raises:
        KeyError: no key has that id.
    """
    for record in store.all():
        if record.key_id == key_id:
            store.set_status(record.key_hash, "revoked")
            return record
    raise KeyError(key_id)


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """``create`` | ``list`` | ``revoke`` (see the module docstring); returns the exit status."""
    environ = dict(os.environ) if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m r1edge.access.keys", description="Manage r1edge API keys.")
    parser.add_argument(
        "--table", default=environ.get(env.R1EDGE_KEYS_TABLE), help=f"keys table (default ${env.R1EDGE_KEYS_TABLE})"
    )
    parser.add_argument(
        "--secret",
        default=environ.get(env.R1EDGE_KEYS_SECRET),
        help=f"HMAC secret name/ARN (default ${env.R1EDGE_KEYS_SECRET})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--rpm", type=int, default=DEFAULT_REQUESTS_PER_MINUTE, help="requests per minute")
    create.add_argument("--tpm", type=int, default=DEFAULT_TOKENS_PER_MINUTE, help="tokens per minute")
    create.add_argument("--key", help="use this key instead of a random one (e.g. a development key)")
    commands.add_parser("list", help="list keys (ids, tenants, status, limits; never the keys)")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    if not args.table:
        parser.error(f"no keys table: set {env.R1EDGE_KEYS_TABLE} or --table")
    store = DynamoKeyStore(args.table)
    if args.command == "create":
        if not args.secret:
            parser.error(f"no HMAC secret: set {env.R1EDGE_KEYS_SECRET} or --secret")
        try:
            key, record = create_key(store, read_secret(args.secret), args.tenant, args.rpm, args.tpm, args.key)
        except ValueError as exc:
            parser.error(str(exc))
        print(f"created {record.key_id} for tenant {record.tenant} ({args.rpm} requests/min, {args.tpm} tokens/min)")
        print("This key is shown once; store it now:", file=sys.stderr)
        print(f"R1EDGE_API_KEY={key}")
    elif args.command == "list":
        for record in store.all():
            fields = {k: v for k, v in record.item().items() if k != "key_hash"}
            print(json.dumps(fields, ensure_ascii=False))
    else:
        try:
            record = revoke_key(store, args.key_id)
        except KeyError:
            print(f"no key with id {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {record.key_id} (tenant {record.tenant})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
