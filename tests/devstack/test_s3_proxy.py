"""The fault-injecting S3 proxy (devstack/s3_proxy.py): forwards faithfully, faults like S3 does."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.s3_proxy import s3_proxy


def _client(endpoint: str, attempts: int = 1):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}))


def test_requests_pass_through_unchanged_and_are_counted(moto_server, s3, bucket):
    with s3_proxy(moto_server.endpoint_url) as proxy:
        client = _client(proxy.endpoint_url)
        client.put_object(Bucket=bucket, Key="a b+é.jpg", Body=b"x" * 70000, Metadata={"k": "v"})
        head = client.head_object(Bucket=bucket, Key="a b+é.jpg")
        assert head["ContentLength"] == 70000 and head["Metadata"] == {"k": "v"}
        assert client.get_object(Bucket=bucket, Key="a b+é.jpg")["Body"].read() == b"x" * 70000
        assert proxy.counts == {"PUT": 1, "HEAD": 1, "GET": 1}


def test_every_request_can_fail_with_s3_errors_that_botocore_retries(moto_server, bucket):
    with s3_proxy(moto_server.endpoint_url, fault_rate=1.0, seed=3) as proxy:
        with pytest.raises(ClientError) as info:
            _client(proxy.endpoint_url, attempts=3).get_object(Bucket=bucket, Key="k")
        assert info.value.response["Error"]["Code"] in {"InternalError", "SlowDown", "ServiceUnavailable"}
        assert proxy.counts["GET"] == 3 and sum(proxy.faults.values()) == 3  # retried, as for real S3
        proxy.fault_rate = 0.0  # switched off at run time
        with pytest.raises(ClientError) as info:
            _client(proxy.endpoint_url).get_object(Bucket=bucket, Key="k")
        assert info.value.response["Error"]["Code"] == "NoSuchKey"


def test_the_next_requests_naming_a_key_can_be_made_to_fail(moto_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="cam/a b.jpg", Body=b"x")
    with s3_proxy(moto_server.endpoint_url) as proxy:
        client = _client(proxy.endpoint_url)
        proxy.fail_next["cam/a b.jpg"] = 2
        for _ in range(2):
            with pytest.raises(ClientError, match="SlowDown"):
                client.get_object(Bucket=bucket, Key="cam/a b.jpg")
        assert client.get_object(Bucket=bucket, Key="cam/a b.jpg")["Body"].read() == b"x"
