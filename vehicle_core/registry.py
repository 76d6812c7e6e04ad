"""The model registry, read side: which classifier version is in service.

    s3://bucket/models/classifier/<version>/model.tar.gz     the artifact as one archive
    s3://bucket/models/classifier/<version>/model.keras       ... and its two files, for browsing
    s3://bucket/models/classifier/<version>/manifest.json
    s3://bucket/models/classifier/current                     {"version": ..., "artifact": ...,
                                                                "sha256": ..., "published_at": ...,
                                                                "history": [...]}

A version, once published, is immutable (``publish`` refuses an existing one), and its archive's
SHA-256 rides in its S3 metadata and in the pointer: a worker refuses an archive whose digest differs
(half-written, truncated, replaced) and keeps serving the version it has.

``load_classifier`` with ``classifier.registry`` set reads ``current`` and loads that archive, so the
version in every result document is the one the pointer named. :class:`RegistryWatcher` re-reads the
pointer while a worker runs (at most every ``classifier.poll_interval_s``) and loads the new version,
so a roll-out or roll-back needs no restart. Writing (publishing a version, moving the pointer,
keeping its ``history`` of earlier versions for roll-backs) is training's job: ``training.publish``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from vehicle_core.config import ClassifierSettings, StorageSettings
from vehicle_core.registry_pointer import (  # the layout and the pointer, re-exported: vehicle_core.registry's API
    ARCHIVE,
    POINTER,
    SHA256_META,
    archive_uri,
    current_artifact,
    current_artifact_uri,
    current_version,
    list_versions,
    pointer_uri,
)

__all__ = ["ARCHIVE", "POINTER", "SHA256_META", "RegistryWatcher", "archive_uri", "current_artifact",
           "current_artifact_uri", "current_version", "list_versions", "pointer_uri"]

log = logging.getLogger(__name__)


class RegistryWatcher:
    """Follows a registry's ``current`` pointer: :meth:`maybe_reload` returns a newly loaded
    classifier when the pointer names another version than the one served, else None.

    The pointer is read at most every ``interval_s`` (a clock check otherwise), so calling it before
    every batch costs nothing. A pointer that cannot be read, or a version that cannot be loaded,
    is logged (and counted through ``on_refused``) and the classifier in service stays: a bad publish
    (a malformed pointer, a truncated archive, a digest that differs) never stops classification.
    """

    def __init__(self, registry: str, storage: StorageSettings, interval_s: float, *,
                 classifier: ClassifierSettings | None = None, version: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.storage = storage
        self.interval_s = interval_s
        self.classifier_settings = classifier
        self.version = version  # the version in service (None: whatever the pointer names is new)
        self.clock = clock
        self._next_read = clock() + interval_s
        self.on_refused: Callable[[], None] | None = None  # told of each refusal (workers count them)

    @classmethod
    def from_settings(cls, classifier: ClassifierSettings, storage: StorageSettings,
                      version: str | None = None) -> RegistryWatcher | None:
        """A watcher when the classifier comes from a registry and polling is on, else None."""
        if classifier.model or not classifier.registry or classifier.poll_interval_s <= 0:
            return None
        return cls(classifier.registry, storage, classifier.poll_interval_s, classifier=classifier, version=version)

    def maybe_reload(self) -> Any | None:
        """The classifier of a newly current version (loaded once), or None when nothing changed."""
        now = self.clock()
        if now < self._next_read:
            return None
        self._next_read = now + self.interval_s
        pointer: dict[str, Any] = {}
        try:
            pointer = current_version(self.registry, self.storage)
            if pointer["version"] == self.version:
                return None
            loaded = self._load(pointer["artifact"], pointer.get("sha256"))
        except Exception as exc:  # noqa: BLE001 - whatever a bad publish raises, the version in service stays
            # Tried again at the next read (every interval_s): a fixed pointer or artifact is picked up.
            log.error("classifier registry %s: keeping version %s, refusing %s (%s)", self.registry, self.version,
                      pointer.get("version", "the pointer"), getattr(exc, "message", None) or repr(exc))
            if self.on_refused is not None:
                self.on_refused()
            return None
        log.info("classifier registry %s: version %s -> %s", self.registry, self.version, pointer["version"])
        self.version = pointer["version"]
        return loaded

    def _load(self, artifact: str, sha256: str | None):
        # On first use: the classifier module brings OpenCV (vehicle_core.classifier imports only
        # vehicle_core.registry_pointer of the registry, so this is no cycle).
        from vehicle_core.classifier import load_classifier

        base = self.classifier_settings or ClassifierSettings(model=None, registry=None, batch_size=32, top_k=3,
                                                              device="auto")
        # The artifact the pointer named, not the pointer again: it may move between two reads.
        return load_classifier(dataclasses.replace(base, model=artifact, registry=None), self.storage,
                               sha256=sha256)
