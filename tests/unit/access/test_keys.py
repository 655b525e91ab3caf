"""API keys: stored only as HMAC-SHA-256 under a Secrets Manager secret (read through Powertools
Parameters), compared in constant time, refused with 401 when missing, unknown or revoked; the
``python -m r1edge.access.keys`` command line on moto's DynamoDB and Secrets Manager."""

from __future__ import annotations

import hashlib
import hmac
import json

import boto3
import pytest
from awsauth import SECRET_VALUE, TABLES, create_auth_resources
from fakes import HMAC_SECRET, MemoryKeyStore
from moto import mock_aws
from starlette.datastructures import Headers

from r1edge.access import keys
from r1edge.access.keys import (
    Authenticator,
    DynamoKeyStore,
    InvalidApiKey,
    bearer_key,
    create_key,
    hash_key,
    revoke_key,
)


@pytest.fixture
def aws(monkeypatch):
    """moto with the template's key resources; Powertools' secret cache emptied around each test."""
    from aws_lambda_powertools.utilities import parameters

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    parameters.clear_caches()
    with mock_aws():
        env = create_auth_resources()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env
    parameters.clear_caches()


def test_key_hash_is_hmac_sha256_under_the_secret():
    assert hash_key("r1e-abc", "s3cret") == hmac.new(b"s3cret", b"r1e-abc", hashlib.sha256).hexdigest()
    assert hash_key("r1e-abc", "s3cret") != hash_key("r1e-abc", "other")
    assert hash_key("r1e-abc", "s3cret") != hashlib.sha256(b"r1e-abc").hexdigest()


def test_new_keys_are_random_prefixed_and_long():
    a, b = keys.new_key(), keys.new_key()
    assert a != b
    assert a.startswith("r1e-")
    assert len(a) == 4 + 43  # 32 random bytes, URL-safe base64 without padding


def test_table_holds_the_hash_and_never_the_key():
    store = MemoryKeyStore()
    key, _ = create_key(store, HMAC_SECRET, "acme", 10, 1000)
    [stored] = store.all()
    assert stored.key_hash == hash_key(key, HMAC_SECRET)
    assert key not in json.dumps(stored.item())
    assert stored.key_id == "key_" + stored.key_hash[:12]
    assert stored.hint == f"r1e-…{key[-4:]}"
    assert (stored.tenant, stored.requests_per_minute, stored.tokens_per_minute) == ("acme", 10, 1000)


def test_authenticate_active_unknown_missing_and_revoked_keys():
    store = MemoryKeyStore()
    key, record = create_key(store, HMAC_SECRET, "acme")
    auth = Authenticator(store, lambda: HMAC_SECRET)
    assert auth.authenticate(key).tenant == "acme"
    for bad in (None, "", key + "x", key[:-1], "r1e-" + "A" * 300, "bad\x00key"):
        with pytest.raises(InvalidApiKey) as err:
            auth.authenticate(bad)
        assert err.value.status == 401
        assert (err.value.type, err.value.code) == ("invalid_request_error", "invalid_api_key")
        assert key not in err.value.message
    revoke_key(store, record.key_id)
    with pytest.raises(InvalidApiKey, match="revoked"):
        auth.authenticate(key)


def test_authentication_compares_hashes_in_constant_time(monkeypatch):
    store = MemoryKeyStore()
    key, record = create_key(store, HMAC_SECRET, "acme")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    Authenticator(store, lambda: HMAC_SECRET).authenticate(key)
    assert calls == [(record.key_hash.encode(), record.key_hash.encode())]


def test_a_different_secret_makes_every_key_unknown():
    store = MemoryKeyStore()
    key, _ = create_key(store, HMAC_SECRET, "acme")
    with pytest.raises(InvalidApiKey):
        Authenticator(store, lambda: "rotated-secret").authenticate(key)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer k1"}, "k1"),
        ({"AUTHORIZATION": "bearer   k1 "}, "k1"),
        ({"authorization": "BEARER k1"}, "k1"),
        ({"X-Api-Key": "k2"}, "k2"),
        ({"x-api-key": " k2 "}, "k2"),
        ({"Authorization": "Bearer k1", "x-api-key": "k2"}, "k1"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_bearer_key_reads_either_header_case_insensitively(headers, expected):
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]  # ASGI servers lower-case names
    assert bearer_key(Headers(raw=raw)) == expected


def test_dynamodb_store_and_the_secret_through_powertools(aws):
    store = DynamoKeyStore(aws["R1EDGE_KEYS_TABLE"])
    assert keys.read_secret(aws["R1EDGE_KEYS_SECRET"]) == SECRET_VALUE
    key, record = create_key(store, keys.read_secret(aws["R1EDGE_KEYS_SECRET"]), "acme", 5, 500)
    auth = Authenticator(store, lambda: keys.read_secret(aws["R1EDGE_KEYS_SECRET"]))
    assert auth.authenticate(key) == record
    items = boto3.client("dynamodb").scan(TableName=TABLES["ApiKeysTable"])["Items"]
    assert len(items) == 1
    assert key not in json.dumps(items)
    revoke_key(store, record.key_id)
    with pytest.raises(InvalidApiKey, match="revoked"):
        auth.authenticate(key)  # strongly consistent read: revocation holds at once


def test_the_secret_is_cached_by_powertools(aws):
    assert keys.read_secret(aws["R1EDGE_KEYS_SECRET"]) == SECRET_VALUE
    boto3.client("secretsmanager").put_secret_value(SecretId=aws["R1EDGE_KEYS_SECRET"], SecretString="rotated")
    assert keys.read_secret(aws["R1EDGE_KEYS_SECRET"]) == SECRET_VALUE  # cached for SECRET_MAX_AGE seconds
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    assert keys.read_secret(aws["R1EDGE_KEYS_SECRET"]) == "rotated"


def test_cli_creates_lists_and_revokes_and_prints_the_key_once(aws, capsys):
    assert keys.main(["create", "--tenant", "acme", "--rpm", "7", "--tpm", "700"]) == 0
    out = capsys.readouterr()
    [line] = [line for line in out.out.splitlines() if line.startswith("R1EDGE_API_KEY=")]
    key = line.split("=", 1)[1]
    assert key.startswith("r1e-")
    store = DynamoKeyStore(aws["R1EDGE_KEYS_TABLE"])
    auth = Authenticator(store, lambda: SECRET_VALUE)
    record = auth.authenticate(key)
    assert (record.tenant, record.requests_per_minute, record.tokens_per_minute) == ("acme", 7, 700)

    assert keys.main(["list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["key_id"], row["tenant"], row["status"]) for row in listed] == [(record.key_id, "acme", "active")]
    assert key not in json.dumps(listed)
    assert "key_hash" not in listed[0]

    assert keys.main(["revoke", record.key_id]) == 0
    assert "revoked" in capsys.readouterr().out
    with pytest.raises(InvalidApiKey):
        auth.authenticate(key)
    assert keys.main(["revoke", "key_000000000000"]) == 1


def test_cli_takes_a_given_key_verbatim(aws, capsys):
    assert keys.main(["create", "--tenant", "dev", "--key", "my-dev-key", "--rpm", "600", "--tpm", "1000000"]) == 0
    assert "R1EDGE_API_KEY=my-dev-key" in capsys.readouterr().out.splitlines()
    record = Authenticator(DynamoKeyStore(aws["R1EDGE_KEYS_TABLE"]), lambda: SECRET_VALUE).authenticate("my-dev-key")
    assert record.tenant == "dev"


def test_cli_without_a_table_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("R1EDGE_KEYS_TABLE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        keys.main(["list"], environ={})
    assert exit_.value.code == 2
    assert "R1EDGE_KEYS_TABLE" in capsys.readouterr().err
