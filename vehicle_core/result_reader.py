"""Reading result documents, and the images they describe, back from S3.

The only module of the reports (summary, export, gallery) that calls boto3: plain paginator and
get_object calls, each botocore failure turned into the project's errors, so that these two
functions can later be pointed at a shared storage layer without touching their callers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vehicle_core.errors import ConfigError, SourceNotFoundError, StorageAccessError, StorageUnavailableError

_MISSING = {"NoSuchKey", "404", "NotFound"}
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403"}


def iter_result_documents(client, bucket: str, prefix: str, limit: int | None = None
                          ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, document)`` of every ``*.json`` object under ``s3://bucket/prefix``, in key order.

    One page of keys (1,000) and one document are held at a time. Objects that are not JSON are
    skipped; a document deleted between listing and reading is skipped too.
    """
    if limit is not None and limit <= 0:
        return
    seen = 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in _guard(pages, f"listing s3://{bucket}/{prefix}"):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json"):
                continue
            body = read_object(client, bucket, obj["Key"])
            try:
                document = json.loads(body) if body is not None else None
            except ValueError:
                document = None  # not a result document: reports count what they can read
            if not isinstance(document, dict):
                continue
            yield obj["Key"], document
            seen += 1
            if limit is not None and seen >= limit:
                return


def read_object(client, bucket: str, key: str) -> bytes | None:
    """The bytes of ``s3://bucket/key``, or None when it does not exist."""
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _code(exc) in _MISSING:
            return None
        raise translate_boto_error(exc, f"reading s3://{bucket}/{key}") from exc
    except BotoCoreError as exc:
        raise translate_boto_error(exc, f"reading s3://{bucket}/{key}") from exc


def read_source(client, bucket: str, key: str) -> bytes | None:
    """The source image a result names (``source.bucket``/``source.key``), or None when it is gone."""
    return read_object(client, bucket, key)


def _guard(pages, what: str):
    try:
        yield from pages
    except (ClientError, BotoCoreError) as exc:
        raise translate_boto_error(exc, what) from exc


def _origin(url: str) -> str:
    """``scheme://host:port`` of a request URL: the endpoint, without the request's path and query."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url or "the S3 endpoint"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate_boto_error(exc: Exception, what: str):
    """The project error for a botocore failure while doing ``what``, its message saying what to do."""
    error = _translated(exc, what)
    error.explained = True  # cli_errors.explain passes it on as it is
    return error


def _translated(exc: Exception, what: str):
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageAccessError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if isinstance(exc, EndpointConnectionError):
        return StorageUnavailableError(f"{what}: cannot reach {_origin(exc.kwargs.get('endpoint_url', ''))}; is the "
                                       "server up? check storage.endpoint_url / AWS_ENDPOINT_URL")
    if isinstance(exc, ClientError):
        if _code(exc) == "NoSuchBucket":
            return ConfigError(f"{what}: no such bucket; check the s3:// URI")
        if _code(exc) in _REFUSED:
            return StorageAccessError(f"{what}: S3 refused ({_code(exc)}); check the credentials and permissions")
        if _code(exc) in _MISSING:
            return SourceNotFoundError(f"{what}: no such object")
    return StorageUnavailableError(f"{what} failed: {exc}")
