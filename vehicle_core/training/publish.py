"""The model registry on S3: one prefix per version and a ``current`` pointer naming the one in service.

    s3://bucket/models/classifier/<version>/model.tar.gz     the artifact as one archive
    s3://bucket/models/classifier/<version>/model.keras       ... and its two files, for browsing
    s3://bucket/models/classifier/<version>/manifest.json
    s3://bucket/models/classifier/current                     {"version": ..., "artifact": ...}

``load_classifier`` with ``classifier.registry`` set reads ``current`` and loads that archive, so
the version in every result document is the one the pointer named. Rolling back = :func:`set_current`.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

from vehicle_core.classifier import MANIFEST_FILE, MODEL_FILE, save_artifact
from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError

POINTER = "current"
ARCHIVE = "model.tar.gz"


def _client_and_key(uri: str, storage: StorageSettings):
    from vehicle_core.storage import parse_s3_uri, s3_client

    bucket, key = parse_s3_uri(uri)
    return s3_client(storage), bucket, key


def publish(
    artifact_dir: str | Path, registry: str, storage: StorageSettings, *, make_current: bool = True
) -> str:
    """Upload an artifact directory under ``registry/<its manifest version>/``; return the archive URI.

    With ``make_current`` the pointer is moved to it once every file is uploaded (so a reader never
    sees a pointer to a half-uploaded version).
    """
    from vehicle_core.classifier import load_artifact

    artifact_dir = Path(artifact_dir)
    model, manifest = load_artifact(artifact_dir)  # refuse to publish anything load_classifier would refuse
    version = str(manifest["version"])
    base = registry.rstrip("/") + "/" + version
    client, bucket, prefix = _client_and_key(base + "/", storage)
    with tempfile.TemporaryDirectory() as tmp:
        archive = save_artifact(model, manifest, Path(tmp) / ARCHIVE)
        client.upload_file(str(archive), bucket, prefix + ARCHIVE)
    for name in (MODEL_FILE, MANIFEST_FILE):
        client.upload_file(str(artifact_dir / name), bucket, prefix + name)
    uri = f"{base}/{ARCHIVE}"
    if make_current:
        set_current(registry, version, storage)
    return uri


def set_current(registry: str, version: str, storage: StorageSettings) -> None:
    """Point ``registry/current`` at ``version`` (which must have been published)."""
    client, bucket, key = _client_and_key(registry.rstrip("/") + "/" + POINTER, storage)
    archive_key = key[: -len(POINTER)] + f"{version}/{ARCHIVE}"
    try:
        client.head_object(Bucket=bucket, Key=archive_key)
    except client.exceptions.ClientError as exc:
        raise ModelLoadError(f"version {version} is not published under {registry}") from exc
    pointer = {
        "version": version,
        "artifact": f"s3://{bucket}/{archive_key}",
        "published_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(pointer).encode(), ContentType="application/json")


def current_version(registry: str, storage: StorageSettings) -> dict[str, str]:
    """The pointer's content: ``{"version", "artifact", "published_at"}``; ModelLoadError when absent."""
    client, bucket, key = _client_and_key(registry.rstrip("/") + "/" + POINTER, storage)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.ClientError as exc:
        raise ModelLoadError(
            f"model registry {registry} has no '{POINTER}' pointer; publish a version first "
            "(vehicle-train publish) or set classifier.model"
        ) from exc
    text = body.decode().strip()
    if text.startswith("{"):
        return json.loads(text)
    # A hand-written pointer holding just the version name is accepted too.
    return {"version": text, "artifact": f"{registry.rstrip('/')}/{text}/{ARCHIVE}"}


def current_artifact_uri(registry: str, storage: StorageSettings) -> str:
    """URI of the archive the registry's ``current`` pointer names (what ``load_classifier`` loads)."""
    return current_version(registry, storage)["artifact"]


def list_versions(registry: str, storage: StorageSettings) -> list[str]:
    """Published versions under ``registry``, oldest first (versions are sortable UTC times)."""
    client, bucket, prefix = _client_and_key(registry.rstrip("/") + "/", storage)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    found = [p["Prefix"][len(prefix) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]
    return sorted(found)
