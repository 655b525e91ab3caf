"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws


@pytest.fixture
def models_s3(monkeypatch):
    """A boto3 S3 client on moto with an empty ``models`` bucket (us-east-1)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client
