"""One object store for the whole project: ``s3://bucket/key`` URIs and local paths, six verbs.

    store = ObjectStore(settings.storage)
    data, info = store.get("s3://photos/cam1/0001.jpg", max_bytes=settings.images.max_bytes)
    store.put_json("s3://photos/results/cam1/0001.jpg.json", doc, metadata={"etag": info.etag})
    for info in store.list("s3://photos/cam1/"): ...

Workers, producer, training and the CLIs read and write through it, so S3 failures are translated
once (:func:`vehicle_core.storage.s3.storage_error`): a missing object is ``SourceNotFoundError``, a
refusal ``AccessDeniedError``/``StorageRejectedError`` (permanent), throttling and 5xx left after
botocore's adaptive retries ``StorageUnavailableError`` (transient). Local paths get the same verbs
(training reads folders; tests and laptops need no S3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from vehicle_core.config import StorageSettings
from vehicle_core.errors import ImageTooLargeError, SourceNotFoundError
from vehicle_core.results.contract import normalize_etag
from vehicle_core.storage.lean import LeanS3
from vehicle_core.storage.s3 import (
    check_key,
    error_code,
    http_status,
    parse_s3_uri,
    read_bounded,
    s3_client,
    storage_error,
)


class PreconditionFailed(Exception):  # noqa: N818 - S3's own name for it
    """A conditional write found the object other than required (it exists, or has another ETag).
    Not an error of the pipeline: the writer reads what is there and decides again."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"the condition on writing {uri} did not hold")
        self.uri = uri


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD, GET or listing says about one object (``uri`` ends in '/' for a local folder)."""

    uri: str
    key: str
    etag: str | None = None  # bare, no quotes
    size: int | None = None
    last_modified: dt.datetime | None = None
    version_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore:
    """Bytes at ``s3://`` URIs or local paths: head, get (bounded), get_json, put, list, delete.

    ``client`` defaults to one boto3 client per thread, built on first use (clients are thread-safe,
    but one per thread avoids their pool's lock), each with its lean path for :meth:`get` and :meth:`put`
    (vehicle_core/storage/lean.py: once a boto3 call has shown a bucket's endpoint, one signed request
    without boto3's per-call machinery; anything but success is made again through boto3). ``cache_dir``
    keeps a local copy of each S3 object :meth:`read` fetched (training re-reads its dataset every epoch).
    """

    def __init__(self, storage: StorageSettings | None = None, *, cache_dir: str | Path | None = None,
                 client: Any = None) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._shared_client = client
        self._local = threading.local()
        #: S3 API calls made through this store, by operation name (``ListObjectsV2``, ``HeadObject``…).
        self.requests: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        if client is not None:
            self._count_on(client)

    @property
    def client(self):
        if self._shared_client is not None:
            return self._shared_client
        if getattr(self._local, "client", None) is None:
            if self.storage is None:
                raise ValueError("an ObjectStore without storage settings reads local paths only")
            session = boto3.session.Session()
            client = self._count_on(s3_client(self.storage, session))
            self._local.lean = LeanS3(session, client, self.storage) if LeanS3.usable(self.storage) else None
            self._local.client = client
        return self._local.client

    def _lean(self) -> LeanS3 | None:
        """This thread's lean GET/PUT path (vehicle_core/storage/lean.py); None with a shared client."""
        client = self.client
        return None if client is self._shared_client else self._local.lean

    def _count_on(self, client):
        def count(model, **_kwargs):
            self._count(model.name)

        client.meta.events.register("before-call.s3", count)
        return client

    def _count(self, operation: str) -> None:
        with self._count_lock:
            self.requests[operation] += 1

    # -- reading ---------------------------------------------------------------------------------

    def head(self, uri: str) -> ObjectInfo | None:
        """The object's ETag, size, time, version and user metadata; None when it does not exist.

        Only a 404 is "does not exist": a 403 raises AccessDeniedError (a refusal is not a deletion).
        """
        if not is_s3(uri):
            path = Path(uri)
            return replace(_local_info(path), etag=_local_etag(path)) if path.is_file() else None
        bucket, key = _checked(uri)
        try:
            resp = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = storage_error(exc, "HEAD", uri)
            if isinstance(error, SourceNotFoundError):
                return None
            raise error from exc
        return _info(uri, key, resp)

    def get(self, uri: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """The object's bytes and what S3 said of them. Larger than ``max_bytes`` (judged by
        Content-Length before the body is read) -> ImageTooLargeError; missing -> SourceNotFoundError."""
        if not is_s3(uri):
            return self._get_local(Path(uri), max_bytes)
        bucket, key = _checked(uri)
        lean = self._lean()
        if lean is not None and lean.knows(bucket):
            got = lean.get(bucket, key, max_bytes, uri)
            if got is not None:
                self._count("GetObject")
                return got[0], _info(uri, key, got[1])
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            body = resp["Body"]
            data = read_bounded(body.read, body.close, resp.get("ContentLength"), max_bytes, uri)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "GET", uri) from exc
        if lean is not None:
            lean.learn(bucket, key)
        info = _info(uri, key, resp)
        return data, info if info.size else _with_size(info, len(data))

    def read(self, uri: str) -> bytes:
        """The object's bytes (no size limit), through ``cache_dir`` when one is set."""
        cached = self.cache_dir / hashlib.sha1(uri.encode()).hexdigest() if self.cache_dir and is_s3(uri) else None
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        data, _ = self.get(uri)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{threading.get_ident()}.part")
            tmp.write_bytes(data)
            tmp.replace(cached)  # atomic: a parallel reader never sees half a file
        return data

    def get_json(self, uri: str) -> Any | None:
        """The parsed JSON document at ``uri``; None when there is none or it is not JSON."""
        try:
            data, _ = self.get(uri)
        except SourceNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def list(self, root: str, *, start_after: str | None = None, delimiter: str | None = None,
             page_size: int | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``root`` (a prefix, not a folder: ``s3://b/cam`` lists ``cam1/…`` too),
        in key order, page by page (memory bounded by a page). Local roots walk the folder, folders
        included with a trailing '/'. ``start_after``: a key (not URI) to resume a listing after.
        ``delimiter``: only the objects directly at this level (see :meth:`list_prefixes` for the
        rest). ``page_size``: keys per request (S3's default and maximum is 1,000)."""
        if not is_s3(root):
            yield from _list_local(Path(root))
            return
        bucket, prefix = _checked(root)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if page_size:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    yield _info(f"s3://{bucket}/{obj['Key']}", obj["Key"], obj)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "LIST", root) from exc

    def list_prefixes(self, root: str, delimiter: str = "/") -> list[str]:
        """The "sub-folders" directly under an ``s3://`` prefix (CommonPrefixes), as URIs."""
        bucket, prefix = _checked(root)
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                                        Delimiter=delimiter)
            for page in pages:
                out += [f"s3://{bucket}/{p['Prefix']}" for p in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "LIST", root) from exc
        return out

    # -- writing ---------------------------------------------------------------------------------

    def put(self, uri: str, data: bytes, *, content_type: str | None = None,
            metadata: dict[str, str] | None = None, if_none_match: bool = False,
            if_match: str | None = None) -> None:
        """Store ``data`` at ``uri`` (local parent folders created); ``metadata`` becomes S3 user
        metadata (``x-amz-meta-*``), readable by HEAD and by listings that ask for it.

        Conditional writes (S3's ``If-None-Match: *`` and ``If-Match: <etag>``): ``if_none_match``
        writes only where no object exists, ``if_match`` only over the object with that ETag; when the
        condition does not hold (an If-Match object gone included; or S3 reports a concurrent conditional
        write, 409), nothing is written
        and :class:`PreconditionFailed` is raised: the caller reads what is there and decides again.
        """
        if not is_s3(uri):
            _put_local(Path(uri), data, if_none_match=if_none_match, if_match=if_match)
            return
        bucket, key = _checked(uri)
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = metadata
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = f'"{normalize_etag(if_match)}"'
        lean = self._lean()
        if lean is not None and lean.knows(bucket) and lean.put(bucket, key, data, _put_headers(extra)):
            self._count("PutObject")
            return
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        except (ClientError, BotoCoreError) as exc:
            if (if_none_match or if_match is not None) and _condition_failed(exc, if_match is not None):
                raise PreconditionFailed(uri) from exc
            raise storage_error(exc, "PUT", uri) from exc
        if lean is not None:
            lean.learn(bucket, key)

    def put_json(self, uri: str, document: Any, *, metadata: dict[str, str] | None = None,
                 if_none_match: bool = False, if_match: str | None = None) -> None:
        """Write ``document`` as compact UTF-8 JSON (conditions as in :meth:`put`)."""
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.put(uri, body, content_type="application/json", metadata=metadata, if_none_match=if_none_match,
                 if_match=if_match)

    def delete(self, uri: str) -> None:
        """Remove the object (nothing there is fine, as in S3)."""
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = _checked(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "DELETE", uri) from exc

    def upload_file(self, path: str | Path, uri: str, *, metadata: dict[str, str] | None = None) -> None:
        """Copy a local file to ``uri`` (multipart for large files, as boto3's transfer manager does);
        ``metadata`` becomes S3 user metadata."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = _checked(uri)
        try:
            # Parts one after another: uploads here are model artifacts and reports (rare), and
            # S3-compatible servers (moto under load) have failed concurrent parts of one upload.
            self.client.upload_file(str(path), bucket, key, Config=TransferConfig(use_threads=False),
                                    ExtraArgs={"Metadata": metadata} if metadata else None)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "PUT", uri) from exc

    def upload_tree(self, folder: str | Path, uri: str) -> list[str]:
        """Copy every file under a local folder to ``uri`` + its relative path; the URIs written."""
        base, folder = uri.rstrip("/") + "/", Path(folder)
        written = []
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                written.append(base + path.relative_to(folder).as_posix())
                self.upload_file(path, written[-1])
        return written

    def download_file(self, uri: str, path: str | Path) -> None:
        """Copy the object at ``uri`` to a local file."""
        bucket, key = _checked(uri)
        try:
            self.client.download_file(bucket, key, str(path))
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "GET", uri) from exc

    def _get_local(self, path: Path, max_bytes: int | None) -> tuple[bytes, ObjectInfo]:
        try:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise ImageTooLargeError(f"{path} is {size} bytes, above the limit of {max_bytes}")
            return path.read_bytes(), _local_info(path)
        except OSError as exc:
            raise SourceNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _put_headers(extra: dict[str, Any]) -> dict[str, str]:
    """PutObject's parameters (as :meth:`ObjectStore.put` passes them to boto3) as HTTP headers."""
    headers = {"Content-Type": extra["ContentType"]} if "ContentType" in extra else {}
    if "IfNoneMatch" in extra:
        headers["If-None-Match"] = extra["IfNoneMatch"]
    if "IfMatch" in extra:
        headers["If-Match"] = extra["IfMatch"]
    headers.update({f"x-amz-meta-{name}": value for name, value in extra.get("Metadata", {}).items()})
    return headers


def _condition_failed(exc: Exception, if_match: bool) -> bool:
    """412 PreconditionFailed; 409 ConditionalRequestConflict (another conditional write to the key in
    progress: S3 asks the caller to read and try again); 404 for If-Match (the object is gone)."""
    if not isinstance(exc, ClientError):
        return False
    status, code = http_status(exc), error_code(exc)
    return status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict") or \
        (if_match and (status == 404 or code == "NoSuchKey"))


_LOCAL_WRITE_LOCK = threading.Lock()


def _local_etag(path: Path) -> str:
    """A local file's version tag for ``put(if_match=...)``: its modification time (ns) and size, read
    from one stat (not its MD5, which would read a model archive whole on every HEAD)."""
    stat = path.stat()
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _put_local(path: Path, data: bytes, *, if_none_match: bool, if_match: str | None) -> None:
    """A local write with S3's conditions (checked under a lock: one process's threads, as in tests);
    written to a temporary file and renamed, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCAL_WRITE_LOCK:
        if if_none_match and path.exists():
            raise PreconditionFailed(str(path))
        if if_match is not None and (not path.is_file() or _local_etag(path) != normalize_etag(if_match)):
            raise PreconditionFailed(str(path))
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
        tmp.write_bytes(data)
        tmp.replace(path)


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _info(uri: str, key: str, resp: dict[str, Any]) -> ObjectInfo:
    size = resp.get("ContentLength", resp.get("Size"))
    return ObjectInfo(
        uri=uri,
        key=key,
        etag=normalize_etag(resp.get("ETag")),
        size=int(size) if size is not None else None,
        last_modified=resp.get("LastModified"),
        version_id=resp.get("VersionId"),
        metadata=dict(resp.get("Metadata") or {}),
    )


def _with_size(info: ObjectInfo, size: int) -> ObjectInfo:
    return replace(info, size=size)


def _local_info(path: Path) -> ObjectInfo:
    stat = path.stat()
    modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
    return ObjectInfo(uri=str(path), key=str(path), size=stat.st_size, last_modified=modified)


def _list_local(base: Path) -> Iterator[ObjectInfo]:
    for p in sorted(base.rglob("*")):
        if p.is_dir():
            yield ObjectInfo(uri=str(p) + "/", key=str(p) + "/")
        else:
            yield _local_info(p)


def _checked(uri: str) -> tuple[str, str]:
    """``parse_s3_uri`` refusing a key (or prefix) longer than S3 allows, before any request."""
    bucket, key = parse_s3_uri(uri)
    return bucket, check_key(bucket, key)
