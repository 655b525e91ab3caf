"""The API-key resources of template.yaml (keys, limits and usage tables, the HMAC secret) created
in moto from the template's own definitions, so tests and template cannot drift apart."""

from __future__ import annotations

from typing import Any

import boto3
from samlocal import load_template

TABLES = {"ApiKeysTable": "r1edge-keys", "RateLimitsTable": "r1edge-limits", "UsageTable": "r1edge-usage"}
SECRET_NAME = "r1edge/api-key-hmac"
SECRET_VALUE = "moto-hmac-secret-0123456789"


def table_definition(logical_id: str) -> dict[str, Any]:
    """``create_table`` arguments from the template's definition of ``logical_id``."""
    props = load_template()["Resources"][logical_id]["Properties"]
    return {k: props[k] for k in ("KeySchema", "AttributeDefinitions", "BillingMode")}


def create_auth_resources(region: str = "us-east-1") -> dict[str, str]:
    """Create the tables and the secret (inside ``mock_aws``); return the router's environment
    variables that point at them."""
    dynamodb = boto3.client("dynamodb", region_name=region)
    for logical_id, name in TABLES.items():
        dynamodb.create_table(TableName=name, **table_definition(logical_id))
    arn = boto3.client("secretsmanager", region_name=region).create_secret(Name=SECRET_NAME, SecretString=SECRET_VALUE)[
        "ARN"
    ]
    return {
        "R1EDGE_KEYS_TABLE": TABLES["ApiKeysTable"],
        "R1EDGE_LIMITS_TABLE": TABLES["RateLimitsTable"],
        "R1EDGE_USAGE_TABLE": TABLES["UsageTable"],
        "R1EDGE_KEYS_SECRET": arn,
    }
