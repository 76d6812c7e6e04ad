"""Per-process holders of the heavy objects: built on first use inside a pool process, then reused.

Nothing here loads at import time (the Celery parent imports ``workers.tasks`` before forking; a model
or CUDA context built there would be shared by forked children, which CUDA and TensorFlow do not
survive). Each holder is built once per process and never per task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from vehicle_core.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lazy(Generic[T]):
    """Build ``factory()`` once, on the first ``get()`` in this process; thread-safe."""

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name = name
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    log.info("loading %s in this worker process", self.name)
                    self._value = self._factory()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def reset(self) -> None:
        """Forget the object (after a fork, or in tests)."""
        self._value = None


class Holders:
    """The S3 client and the two pipeline stages of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.s3 = Lazy("S3 client", self._s3)
        self.detect = Lazy("detector (DetectStage)", self._detect)
        self.classify = Lazy("classifier (ClassifyStage)", self._classify)

    def _s3(self):
        from vehicle_core.storage import s3_client

        return s3_client(self.settings.storage)

    def _detect(self):
        from vehicle_core.pipeline import DetectStage

        return DetectStage.from_settings(self.settings)

    def _classify(self):
        from vehicle_core.pipeline import ClassifyStage

        return ClassifyStage.from_settings(self.settings)

    def reset(self) -> None:
        for holder in (self.s3, self.detect, self.classify):
            holder.reset()
