"""S3/SQS access: clients with adaptive retries, typed errors, and the artifact resolver.

``resolve_local`` turns any artifact URI (local path, ``s3://`` file/prefix/archive, ``zoo://NAME``)
into a local path, caching S3 downloads by bucket/key and ETag so workers download a model once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from vehicle_core.config import StorageSettings
from vehicle_core.errors import (
    ImageTooLargeError,
    ModelLoadError,
    SourceNotFoundError,
    StorageUnavailableError,
)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
ZOO_DIR = Path(__file__).parent / "zoo"


def _config(storage: StorageSettings) -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": storage.max_attempts},  # attempts, first included
        connect_timeout=storage.connect_timeout_s,
        read_timeout=storage.read_timeout_s,
    )


def _client(service: str, storage: StorageSettings):
    # endpoint_url=None lets boto3 pick AWS_ENDPOINT_URL_<SERVICE> / AWS_ENDPOINT_URL / AWS itself.
    session = boto3.session.Session()
    region = session.region_name or storage.region
    return session.client(service, endpoint_url=storage.endpoint_url or None, region_name=region,
                          config=_config(storage))


def s3_client(storage: StorageSettings):
    """A boto3 S3 client: standard credential chain, endpoint from settings or AWS_ENDPOINT_URL[_S3],
    adaptive retries (``storage.max_attempts``) and the configured connect/read timeouts."""
    return _client("s3", storage)


def sqs_client(storage: StorageSettings):
    """A boto3 SQS client configured like :func:`s3_client`."""
    return _client("sqs", storage)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _default_max_bytes() -> int:
    from vehicle_core.config import load_settings

    return load_settings().images.max_bytes


def get_object(client, bucket: str, key: str, max_bytes: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """Read an object: ``(data, {"etag", "version_id", "size"})``.

    Missing → SourceNotFoundError; larger than ``max_bytes`` (default images.max_bytes), judged by
    ContentLength before the body is read → ImageTooLargeError; throttling, 5xx and connection
    failures left after botocore's retries → StorageUnavailableError.
    """
    limit = _default_max_bytes() if max_bytes is None else max_bytes
    try:
        resp = client.get_object(Bucket=bucket, Key=key)
        size = int(resp.get("ContentLength") or 0)
        if size > limit:
            resp["Body"].close()
            raise ImageTooLargeError(f"s3://{bucket}/{key} is {size} bytes, above the limit of {limit}")
        data = resp["Body"].read()
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND:
            raise SourceNotFoundError(f"s3://{bucket}/{key} does not exist") from exc
        raise StorageUnavailableError(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailableError(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    meta = {"etag": (resp.get("ETag") or "").strip('"') or None, "version_id": resp.get("VersionId"),
            "size": size or len(data)}
    return data, meta


def put_json(client, bucket: str, key: str, document: Any) -> None:
    """Write ``document`` as UTF-8 JSON; storage failures → StorageUnavailableError."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except (ClientError, BotoCoreError) as exc:
        raise StorageUnavailableError(f"writing s3://{bucket}/{key} failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Artifact resolver


def resolve_local(uri: str, storage: StorageSettings) -> Path:
    """A local path for an artifact URI: local paths as is, ``s3://`` objects/prefixes/archives
    downloaded into ``storage.cache_dir`` (reused while the ETag matches), ``zoo://NAME`` from
    vehicle_core/zoo. ModelLoadError saying what failed and how to fix it, on any failure."""
    uri = str(uri)
    if uri.startswith("zoo://"):
        path = ZOO_DIR / uri[len("zoo://"):]
        if path.exists():
            return path
        raise ModelLoadError(f"{uri}: no bundled model at {path}; use a local path or s3:// URI instead")
    if uri.startswith("s3://"):
        try:
            return _resolve_s3(uri, storage)
        except ModelLoadError:
            raise
        except (ClientError, BotoCoreError, OSError, tarfile.TarError, ValueError) as exc:
            raise ModelLoadError(f"{uri}: cannot download ({exc}); check the URI, credentials and "
                                 f"storage.endpoint_url, or copy the artifact locally and pass its path") from exc
    path = Path(uri).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{uri}: no such file or directory; pass an existing path or an s3:// URI")
    if not _is_archive(path):
        return path
    # Extract into the cache (the archive's folder may be read-only), keyed by path, size and mtime.
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return _extract_if_archive(path, Path(storage.cache_dir).expanduser() / "local" / f"{_archive_stem(path)}-{tag}")


def _is_archive(path: Path | str) -> bool:
    return str(path).endswith((".tar.gz", ".tgz"))


def _archive_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name[: -len(".tgz")]


def _resolve_s3(uri: str, storage: StorageSettings) -> Path:
    bucket, key = parse_s3_uri(uri)
    client = s3_client(storage)
    objects = _list_artifact(client, bucket, key, uri)
    # The cache entry's name covers every object's key and ETag: a changed artifact gets a new entry.
    fingerprint = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = Path(storage.cache_dir).expanduser() / bucket / key.strip("/")
    target = cache_root / fingerprint
    if not target.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_root))
        try:
            _download(client, bucket, key, objects, tmp)
            with contextlib.suppress(OSError):  # another process won the race: its copy is the same
                os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    single = len(objects) == 1 and objects[0][0] == key
    if not single:
        return target / "content"
    path = target / "content" / Path(key).name
    if _is_archive(path):
        out = target / "extracted"
        if out.exists():
            return out
        return _extract_if_archive(path, out)
    return path


def _list_artifact(client, bucket: str, key: str, uri: str) -> list[tuple[str, str]]:
    """``[(key, etag)]``: the object itself, or every object under the prefix when it is a directory."""
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return [(key, head["ETag"].strip('"'))]
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND:
                raise
    prefix = key.rstrip("/") + "/" if key else ""
    found: list[tuple[str, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [(o["Key"], o["ETag"].strip('"')) for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    if not found:
        raise ModelLoadError(f"{uri}: no such object or prefix in S3; check the URI (and that the artifact was published)")
    return sorted(found)


def _download(client, bucket: str, key: str, objects: list[tuple[str, str]], dest: Path) -> None:
    content = dest / "content"
    prefix = key.rstrip("/") + "/" if key else ""
    for obj_key, _ in objects:
        rel = Path(obj_key).name if obj_key == key else obj_key[len(prefix):]
        out = (content / rel).resolve()
        if not out.is_relative_to(content.resolve()):
            raise ModelLoadError(f"s3://{bucket}/{obj_key}: key escapes the artifact directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj_key, str(out))


def _extract_if_archive(archive: Path, out: Path) -> Path:
    """Extract a .tar.gz safely (no absolute paths, '..', links or devices) into ``out`` atomically."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                tar.extractall(tmp, filter="data")  # refuses traversal, absolute paths, devices
            except (tarfile.FilterError, tarfile.TarError) as exc:
                raise ModelLoadError(f"{archive}: unsafe or corrupt archive ({exc}); rebuild it") from exc
        with contextlib.suppress(OSError):
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
