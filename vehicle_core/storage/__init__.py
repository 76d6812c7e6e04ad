"""Storage: the project's one S3 layer (clients, error translation, an object store) and artifacts.

* :mod:`vehicle_core.storage.s3` — boto3 clients honouring ``AWS_ENDPOINT_URL(_S3)`` with adaptive
  retries, ``s3://`` URIs, ETags, and :func:`storage_error`, the one translation of botocore errors;
* :mod:`vehicle_core.storage.objects` — :class:`ObjectStore`: head, get (bounded), get_json, put
  (conditional: If-None-Match / If-Match), list, delete over ``s3://`` URIs and local paths;
* :mod:`vehicle_core.storage.lean` — the store's GET and PUT as one request signed with botocore's
  signer once boto3 has shown a bucket's endpoint (half the CPU of a boto3 call); anything but
  success is redone through boto3;
* :mod:`vehicle_core.storage.artifacts` — :func:`resolve_local` for model artifacts (``zoo://``,
  ``s3://`` prefixes and archives, local ``.tar.gz``), cached by ETag, checked against a SHA-256.
"""

from vehicle_core.results.contract import normalize_etag
from vehicle_core.storage.artifacts import ZOO_DIR, resolve_local, sha256_of, verify_sha256
from vehicle_core.storage.objects import ObjectInfo, ObjectStore, PreconditionFailed, is_s3
from vehicle_core.storage.s3 import (
    events_client,
    parse_s3_uri,
    s3_client,
    s3_uri,
    sqs_client,
    storage_error,
    sts_client,
)

__all__ = [
    "ZOO_DIR",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "events_client",
    "sts_client",
    "is_s3",
    "normalize_etag",
    "parse_s3_uri",
    "resolve_local",
    "s3_client",
    "s3_uri",
    "sha256_of",
    "sqs_client",
    "storage_error",
    "verify_sha256",
]
