"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import boto3
import pytest
from jobstack import stack  # noqa: F401 - the job pipeline fixture, shared by the jobs tests
from moto import mock_aws


@pytest.fixture
def models_s3(monkeypatch):
    """A boto3 S3 client on moto with an empty ``models`` bucket (us-east-1)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


@pytest.fixture
def health_table(monkeypatch):
    """A moto DynamoDB health table made from template.yaml's ``HealthTable`` (with its TTL),
    as a boto3 ``Table`` resource named ``r1edge-health``."""
    from run import create_health_table  # infra/local/run.py

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        name = create_health_table(boto3.client("dynamodb", region_name="us-east-1"))
        yield boto3.resource("dynamodb", region_name="us-east-1").Table(name)
