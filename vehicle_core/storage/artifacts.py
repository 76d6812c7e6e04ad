"""Model artifacts as local paths: ``resolve_local`` turns any artifact URI (local path, ``s3://``
file/prefix/archive, ``zoo://NAME``) into a local path, caching S3 downloads by bucket/key and ETag so
workers download a model once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError, VehiclePipelineError
from vehicle_core.storage.objects import ObjectStore
from vehicle_core.storage.s3 import parse_s3_uri
from vehicle_core.storage.safe_tar import extract_data

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path | str, expected: str, uri: str) -> None:
    """ModelLoadError unless the file at ``path`` has the SHA-256 ``expected`` (a half-written,
    truncated or replaced artifact is never loaded)."""
    if not Path(path).is_file():
        raise ModelLoadError(f"{uri}: a SHA-256 is given but the artifact is not one file")
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ModelLoadError(f"{uri}: SHA-256 {actual} differs from the {expected} it was published with; "
                             "refusing it (publish the version again under a new name)")


def resolve_local(uri: str, storage: StorageSettings, *, sha256: str | None = None) -> Path:
    """A local path for an artifact URI: local paths as is, ``s3://`` objects/prefixes/archives
    downloaded into ``storage.cache_dir`` (reused while the ETag matches), ``zoo://NAME`` from
    vehicle_core/zoo. With ``sha256``, the file (the archive itself, before extraction) must have
    that digest. ModelLoadError saying what failed and how to fix it, on any failure."""
    uri = str(uri)
    if uri.startswith("zoo://"):
        path = ZOO_DIR / uri[len("zoo://"):]
        if path.exists():
            return path
        raise ModelLoadError(f"{uri}: no bundled model at {path}; use a local path or s3:// URI instead")
    if uri.startswith("s3://"):
        try:
            return _resolve_s3(uri, storage, sha256)
        except ModelLoadError:
            raise
        except (VehiclePipelineError, OSError, EOFError, zlib.error, tarfile.TarError, ValueError) as exc:
            raise ModelLoadError(f"{uri}: cannot download ({exc}); check the URI, credentials and "
                                 f"storage.endpoint_url, or copy the artifact locally and pass its path") from exc
    path = Path(uri).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{uri}: no such file or directory; pass an existing path or an s3:// URI")
    if sha256 is not None:
        verify_sha256(path, sha256, uri)
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


def _resolve_s3(uri: str, storage: StorageSettings, sha256: str | None = None) -> Path:
    bucket, key = parse_s3_uri(uri)
    store = ObjectStore(storage)
    objects = _list_artifact(store, bucket, key, uri)
    # The cache entry's name covers every object's key and ETag: a changed artifact gets a new entry.
    fingerprint = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = Path(storage.cache_dir).expanduser() / bucket / key.strip("/")
    target = cache_root / fingerprint
    if not target.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_root))
        try:
            _download(store, bucket, key, objects, tmp)
            with contextlib.suppress(OSError):  # another process won the race: its copy is the same
                os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    single = len(objects) == 1 and objects[0][0] == key
    if not single:
        return target / "content"
    path = target / "content" / Path(key).name
    if sha256 is not None:
        verify_sha256(path, sha256, uri)  # the cached copy too: checked before anything is extracted
    if _is_archive(path):
        out = target / "extracted"
        if out.exists():
            return out
        return _extract_if_archive(path, out)
    return path


def _list_artifact(store: ObjectStore, bucket: str, key: str, uri: str) -> list[tuple[str, str]]:
    """``[(key, etag)]``: the object itself, or every object under the prefix when it is a directory."""
    if key and not key.endswith("/"):
        head = store.head(uri)
        if head is not None:
            return [(key, head.etag or "")]
    prefix = key.rstrip("/") + "/" if key else ""
    found = [(o.key, o.etag or "") for o in store.list(f"s3://{bucket}/{prefix}") if not o.key.endswith("/")]
    if not found:
        raise ModelLoadError(f"{uri}: no such object or prefix in S3; check the URI (and that the artifact was published)")
    return sorted(found)


def _download(store: ObjectStore, bucket: str, key: str, objects: list[tuple[str, str]], dest: Path) -> None:
    content = dest / "content"
    prefix = key.rstrip("/") + "/" if key else ""
    for obj_key, _ in objects:
        rel = Path(obj_key).name if obj_key == key else obj_key[len(prefix):]
        out = (content / rel).resolve()
        if not out.is_relative_to(content.resolve()):
            raise ModelLoadError(f"s3://{bucket}/{obj_key}: key escapes the artifact directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(f"s3://{bucket}/{obj_key}", out)


def _extract_if_archive(archive: Path, out: Path) -> Path:
    """Extract a .tar.gz safely (no absolute paths, '..', links or devices) into ``out`` atomically."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out.parent))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                extract_data(tar, tmp)  # refuses traversal, absolute paths, devices (vehicle_core/storage/safe_tar.py)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ModelLoadError(f"{archive}: unsafe, truncated or corrupt archive ({exc!r}); rebuild it") from exc
        with contextlib.suppress(OSError):
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
