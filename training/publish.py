"""The model registry, write side: publish a version, move the ``current`` pointer, roll back (layout
and the read side: ``vehicle_core.registry``).

The pointer keeps a short ``history`` of the versions it named before (newest last): ``promote``
pushes the version it replaces, ``rollback`` pops the last one and makes it current again.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

from vehicle_core.classifier import MANIFEST_FILE, MODEL_FILE, save_artifact
from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError
from vehicle_core.registry import (
    ARCHIVE,
    SHA256_META,
    archive_uri,
    current_version,
    list_versions,
    pointer_uri,
)
from vehicle_core.storage import ObjectStore, sha256_of


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
    if store.head(f"{base}/{ARCHIVE}") is not None:
        raise ModelLoadError(f"version {version} is already published under {registry}: a published version "
                             "is immutable; train or name a new version (the manifest's 'version')")
    with tempfile.TemporaryDirectory() as tmp:
        archive = save_artifact(model, manifest, Path(tmp) / ARCHIVE)
        digest = sha256_of(archive)
        # The file pieces first, the archive last: the archive's existence is what "published" means.
        for name in (MODEL_FILE, MANIFEST_FILE):
            store.upload_file(artifact_dir / name, f"{base}/{name}")
        store.upload_file(archive, f"{base}/{ARCHIVE}", metadata={SHA256_META: digest})
    if make_current:
        set_current(registry, version, storage)
    return f"{base}/{ARCHIVE}"


#: Earlier versions the pointer remembers for ``rollback``.
HISTORY_LENGTH = 20


def set_current(registry: str, version: str, storage: StorageSettings, *, history: list[str] | None = None) -> dict:
    """Point ``registry/current`` at ``version`` (which must have been published); return the pointer.

    The version it replaces joins the pointer's history (unless ``history`` is given: rollback's).
    """
    store = ObjectStore(storage)
    archive = archive_uri(registry, version)
    info = store.head(archive)
    if info is None:
        raise ModelLoadError(f"version {version} is not published under {registry}")
    digest = (info.metadata or {}).get(SHA256_META)
    if digest is None:  # published before digests were recorded: record the archive's as it is now
        with tempfile.TemporaryDirectory() as tmp:
            store.download_file(archive, Path(tmp) / ARCHIVE)
            digest = sha256_of(Path(tmp) / ARCHIVE)
    if history is None:
        previous = _pointer_or_none(registry, storage)
        history = list(previous.get("history", [])) if previous else []
        if previous and previous.get("version") != version:
            history.append(previous["version"])
    pointer = {
        "version": version,
        "artifact": archive,
        "sha256": digest,  # workers refuse an archive whose digest differs (vehicle_core/storage/artifacts.py)
        "published_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "history": history[-HISTORY_LENGTH:],
    }
    store.put(pointer_uri(registry), json.dumps(pointer).encode(), content_type="application/json")
    return pointer


def _pointer_or_none(registry: str, storage: StorageSettings) -> dict | None:
    try:
        return current_version(registry, storage)
    except ModelLoadError:  # no pointer yet
        return None


def promote(registry: str, version: str, storage: StorageSettings) -> dict:
    """Make a published ``version`` current (workers following the registry pick it up)."""
    return set_current(registry, version, storage)


def rollback(registry: str, storage: StorageSettings) -> dict:
    """Make the previously current version current again; ModelLoadError when there is none."""
    pointer = _pointer_or_none(registry, storage)
    history = list((pointer or {}).get("history", []))
    if not history:
        raise ModelLoadError(f"model registry {registry} has no earlier version to roll back to")
    previous = history.pop()
    return set_current(registry, previous, storage, history=history)


def registry_status(registry: str, storage: StorageSettings) -> dict:
    """Every published version, the current one and the roll-back history: what ``models list`` prints."""
    pointer = _pointer_or_none(registry, storage) or {}
    return {"registry": registry, "current": pointer.get("version"), "history": pointer.get("history", []),
            "versions": list_versions(registry, storage)}


def seed_if_empty(artifact_dir: str | Path, registry: str, storage: StorageSettings) -> str | None:
    """Publish ``artifact_dir`` and make it current when the registry has no pointer yet; return its
    archive URI, or None when a version is already current (then nothing is written)."""
    if _pointer_or_none(registry, storage) is not None:
        return None
    return publish(artifact_dir, registry, storage)
