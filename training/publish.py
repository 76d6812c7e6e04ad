"""The model registry, write side: publish a version, move the ``current`` pointer (layout and the
read side: ``vehicle_core.registry``)."""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

from vehicle_core.classifier import MANIFEST_FILE, MODEL_FILE, save_artifact
from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError
from vehicle_core.registry import ARCHIVE, archive_uri, pointer_uri
from vehicle_core.storage import ObjectStore


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
    store = ObjectStore(storage)
    with tempfile.TemporaryDirectory() as tmp:
        archive = save_artifact(model, manifest, Path(tmp) / ARCHIVE)
        store.upload_file(archive, f"{base}/{ARCHIVE}")
    for name in (MODEL_FILE, MANIFEST_FILE):
        store.upload_file(artifact_dir / name, f"{base}/{name}")
    if make_current:
        set_current(registry, version, storage)
    return f"{base}/{ARCHIVE}"


def set_current(registry: str, version: str, storage: StorageSettings) -> None:
    """Point ``registry/current`` at ``version`` (which must have been published)."""
    store = ObjectStore(storage)
    archive = archive_uri(registry, version)
    if store.head(archive) is None:
        raise ModelLoadError(f"version {version} is not published under {registry}")
    pointer = {
        "version": version,
        "artifact": archive,
        "published_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    store.put(pointer_uri(registry), json.dumps(pointer).encode(), content_type="application/json")
