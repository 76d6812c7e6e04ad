"""The model registry, read side: which classifier version is in service.

    s3://bucket/models/classifier/<version>/model.tar.gz     the artifact as one archive
    s3://bucket/models/classifier/<version>/model.keras       ... and its two files, for browsing
    s3://bucket/models/classifier/<version>/manifest.json
    s3://bucket/models/classifier/current                     {"version": ..., "artifact": ...}

``load_classifier`` with ``classifier.registry`` set reads ``current`` and loads that archive, so the
version in every result document is the one the pointer named. Writing (publishing a version,
moving the pointer) is training's job: ``training.publish``.
"""

from __future__ import annotations

from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError, SourceNotFoundError
from vehicle_core.storage import ObjectStore

POINTER = "current"
ARCHIVE = "model.tar.gz"


def pointer_uri(registry: str) -> str:
    return registry.rstrip("/") + "/" + POINTER


def archive_uri(registry: str, version: str) -> str:
    return f"{registry.rstrip('/')}/{version}/{ARCHIVE}"


def current_version(registry: str, storage: StorageSettings) -> dict[str, str]:
    """The pointer's content: ``{"version", "artifact", "published_at"}``; ModelLoadError when absent."""
    import json

    try:
        data, _ = ObjectStore(storage).get(pointer_uri(registry))
    except SourceNotFoundError as exc:
        raise ModelLoadError(
            f"model registry {registry} has no '{POINTER}' pointer; publish a version first "
            "(vehicle-train publish) or set classifier.model"
        ) from exc
    text = data.decode().strip()
    if text.startswith("{"):
        return json.loads(text)
    # A hand-written pointer holding just the version name is accepted too.
    return {"version": text, "artifact": archive_uri(registry, text)}


def current_artifact_uri(registry: str, storage: StorageSettings) -> str:
    """URI of the archive the registry's ``current`` pointer names (what ``load_classifier`` loads)."""
    return current_version(registry, storage)["artifact"]


def list_versions(registry: str, storage: StorageSettings) -> list[str]:
    """Published versions under ``registry``, oldest first (versions are sortable UTC times)."""
    base = registry.rstrip("/") + "/"
    return sorted(uri[len(base):].rstrip("/") for uri in ObjectStore(storage).list_prefixes(base))
