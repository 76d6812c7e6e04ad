"""boto3 clients and the one translation of botocore errors into the project's error classes.

Every module that talks to S3 goes through :class:`vehicle_core.storage.ObjectStore` (or, for model
artifacts, :func:`vehicle_core.storage.resolve_local`); both build their clients here and read
botocore's failures with :func:`storage_error`, so "missing", "refused" and "try again" mean the
same thing everywhere.
"""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from vehicle_core.config import StorageSettings
from vehicle_core.errors import (
    AccessDeniedError,
    ImageTooLargeError,
    SourceNotFoundError,
    StorageRejectedError,
    StorageUnavailableError,
    VehiclePipelineError,
)

#: Error codes S3 uses for "no such object" (HEAD answers a bare 404 without a body).
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket", "NoSuchVersion"})
#: 4xx statuses that may pass: conflict, throttling, request timeout. Every other 4xx is permanent.
RETRIABLE_4XX = frozenset({408, 409, 429})
THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "TooManyRequests", "RequestTimeout", "RequestTimeTooSkewed"})


#: Refusals S3 may send with a 400 as well as a 403 (bad or expired credentials).
REFUSED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                           "InvalidToken"})


def _config(storage: StorageSettings) -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": storage.max_attempts},  # attempts, first included
        connect_timeout=storage.connect_timeout_s,
        read_timeout=storage.read_timeout_s,
        max_pool_connections=storage.max_pool_connections,
    )


def _client(service: str, storage: StorageSettings, session=None):
    # endpoint_url=None lets boto3 pick AWS_ENDPOINT_URL_<SERVICE> / AWS_ENDPOINT_URL / AWS itself.
    session = session or boto3.session.Session()
    region = session.region_name or storage.region
    return session.client(service, endpoint_url=storage.endpoint_url or None, region_name=region,
                          config=_config(storage))


def s3_client(storage: StorageSettings, session=None):
    """A boto3 S3 client: standard credential chain, endpoint from settings or AWS_ENDPOINT_URL[_S3],
    adaptive retries (``storage.max_attempts``) and the configured connect/read timeouts. ``session``:
    the boto3 session to build it from (a new one by default)."""
    return _client("s3", storage, session)


def sqs_client(storage: StorageSettings):
    """A boto3 SQS client configured like :func:`s3_client`."""
    return _client("sqs", storage)


def events_client(storage: StorageSettings):
    """A boto3 EventBridge client configured like :func:`s3_client` (``setup-bucket --eventbridge``)."""
    return _client("events", storage)


def sts_client(storage: StorageSettings):
    """A boto3 STS client configured like :func:`s3_client` (``setup-bucket``: the caller's account)."""
    return _client("sts", storage)


#: S3's limit on a key: 1,024 bytes of UTF-8. AWS answers a longer one with a 4xx; moto accepts it,
#: so the storage layer enforces the limit itself, before any request.
MAX_KEY_BYTES = 1024


def check_key(bucket: str, key: str) -> str:
    """``key`` when S3 could store it, else StorageRejectedError (no request is sent)."""
    from vehicle_core.errors import StorageRejectedError

    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise StorageRejectedError(f"s3://{bucket}/{key[:60]}… is a key of {size} bytes; S3 keys are at most "
                                   f"{MAX_KEY_BYTES} bytes of UTF-8")
    return key


def read_bounded(read, close, declared: int | None, max_bytes: int | None, uri: str) -> bytes:
    """An object's body within ``max_bytes``: refused by its declared length before any byte is read,
    and by what arrives when no length was declared (a chunked answer). ``read(amt)`` reads up to
    ``amt`` bytes (all for None); ``close()`` drops the connection with its unread body. The body is
    read to its end, so the transport's own length check runs (a body cut short raises there)."""
    if max_bytes is None:
        return read(None)
    if declared is not None and declared > max_bytes:
        close()
        raise ImageTooLargeError(f"{uri} is {declared} bytes, above the limit of {max_bytes}")
    data = read(max_bytes + 1)
    if len(data) <= max_bytes:
        data += read(None)  # b"" at the end of the body
    if len(data) > max_bytes:
        close()
        raise ImageTooLargeError(f"{uri} is more than {max_bytes} bytes, the limit")
    return data


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key`` (the key verbatim: no quoting, so every key round-trips)."""
    return f"s3://{bucket}/{key}"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def storage_error(exc: Exception, action: str, uri: str) -> VehiclePipelineError:
    """The project's error for a botocore failure of ``action`` on ``uri``.

    404 family -> SourceNotFoundError; 403 -> AccessDeniedError; other 4xx but 408/409/429 ->
    StorageRejectedError (permanent: bad key, missing bucket permissions...); throttling, 5xx and
    connection failures left after botocore's own retries -> StorageUnavailableError (retried).
    """
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        where = f"{action} {uri}"
        if code == "NoSuchBucket":
            return SourceNotFoundError(f"{uri}: no such bucket; check the s3:// URI")
        if code in NOT_FOUND_CODES or status == 404:
            return SourceNotFoundError(f"{uri} does not exist ({code or status})")
        if code in THROTTLING_CODES or status is None or status >= 500 or status in RETRIABLE_4XX:
            return StorageUnavailableError(f"{where} failed: {code or status} (retried by botocore first)")
        if status == 403 or code in REFUSED_CODES:
            return AccessDeniedError(f"{where} was refused ({code}): check the IAM policy of this process "
                                     "(docs/iam.md) and the bucket policy")
        return StorageRejectedError(f"{where} was rejected by S3: {code} ({status})")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageUnavailableError(f"{action} {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                                       "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if isinstance(exc, EndpointConnectionError):
        return StorageUnavailableError(f"{action} {uri}: cannot reach {_origin(exc.kwargs.get('endpoint_url', ''))}; "
                                       "is the server up? check storage.endpoint_url / AWS_ENDPOINT_URL")
    if isinstance(exc, BotoCoreError):
        return StorageUnavailableError(f"{action} {uri} failed: {exc}")
    raise TypeError(f"not a botocore error: {exc!r}")


def _origin(url: str) -> str:
    """``scheme://host:port`` of a request URL: the endpoint, without the request's path and query."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url or "the S3 endpoint"
