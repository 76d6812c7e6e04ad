"""The model registry's layout in S3 and its ``current`` pointer, read side (see :mod:`vehicle_core.registry`).

Kept apart from :class:`~vehicle_core.registry.RegistryWatcher` (which loads classifiers): the
classifier reads the pointer here to resolve ``classifier.registry``, and the watcher loads through the
classifier, so neither module has to import the other both ways.
"""

from __future__ import annotations

import re
from typing import Any

from vehicle_core.config import StorageSettings
from vehicle_core.errors import ModelLoadError, SourceNotFoundError
from vehicle_core.storage import ObjectStore

POINTER = "current"
ARCHIVE = "model.tar.gz"
#: S3 user metadata of a published archive holding its SHA-256 (the pointer repeats it as ``sha256``).
SHA256_META = "vp-sha256"


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
    try:
        text = data.decode().strip()
        if not text.startswith(("{", "[")) and text not in ("null", "true", "false") and _VERSION.fullmatch(text):
            # A hand-written pointer holding just the version name is accepted too.
            return {"version": text, "artifact": archive_uri(registry, text)}
        pointer = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        _bad(registry, f"not JSON ({exc})")
    if not isinstance(pointer, dict):
        _bad(registry, "not a JSON object")
    for field in ("version", "artifact"):
        if not isinstance(pointer.get(field), str) or not pointer[field]:
            _bad(registry, f"no {field!r}")
    if pointer.get("sha256") is not None and not _is_sha256(pointer["sha256"]):
        _bad(registry, "'sha256' is not 64 hex digits")
    return pointer


_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _bad(registry: str, why: str):
    raise ModelLoadError(f"model registry pointer {pointer_uri(registry)} is malformed: {why}; fix it with "
                         "`vehicle-train models promote VERSION` or `rollback`")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def current_artifact_uri(registry: str, storage: StorageSettings) -> str:
    """URI of the archive the registry's ``current`` pointer names (what ``load_classifier`` loads)."""
    return current_version(registry, storage)["artifact"]


def current_artifact(registry: str, storage: StorageSettings) -> tuple[str, str | None]:
    """``(archive URI, its SHA-256 or None)`` as the registry's ``current`` pointer names them."""
    pointer = current_version(registry, storage)
    return pointer["artifact"], pointer.get("sha256")


def list_versions(registry: str, storage: StorageSettings) -> list[str]:
    """Published versions under ``registry``, oldest first (versions are sortable UTC times)."""
    base = registry.rstrip("/") + "/"
    return sorted(uri[len(base):].rstrip("/") for uri in ObjectStore(storage).list_prefixes(base))
