"""Per-process holders of the heavy objects: built on first use inside a pool process, then reused.

Nothing here loads at import time (see :class:`vehicle_core.lazy.Lazy`); each holder is built once per
process and never per task.
"""

from __future__ import annotations

from vehicle_core.config import Settings
from vehicle_core.lazy import Lazy


class Holders:
    """The object store, the crash ledger and the two pipeline stages of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Lazy("object store (S3 client)", self._store)
        self.ledger = Lazy("crash ledger (Redis)", self._ledger)
        self.fetchers = Lazy("S3 fetcher threads", self._fetchers)
        self.detect = Lazy("detector (DetectStage)", self._detect)
        self.classify = Lazy("classifier (ClassifyStage)", self._classify)

    def _store(self):
        from vehicle_core.storage import ObjectStore

        return ObjectStore(self.settings.storage)

    def _ledger(self):
        import redis

        from workers.crash_ledger import CrashLedger

        s = self.settings
        # Marks must outlive a redelivery: at once after a pool process dies, or after the
        # visibility timeout when a whole worker vanished.
        ttl = int(s.broker.visibility_timeout_s + 2 * s.worker.task_time_limit_s)
        return CrashLedger(redis.Redis.from_url(s.broker.state_redis_url), max_deliveries=s.worker.max_deliveries, ttl_s=ttl)

    def _fetchers(self):
        from concurrent.futures import ThreadPoolExecutor

        # One thread per pooled S3 connection: a batch's reads and decodes overlap (boto3 and OpenCV
        # release the GIL).
        return ThreadPoolExecutor(max_workers=self.settings.storage.max_pool_connections,
                                  thread_name_prefix="fetch")

    def _detect(self):
        from vehicle_core.pipeline import DetectStage

        return DetectStage.from_settings(self.settings)

    def _classify(self):
        from vehicle_core.pipeline import ClassifyStage
        from workers import metrics

        stage = ClassifyStage.from_settings(self.settings)
        if stage.watcher is not None:  # a refused new version shows on /metrics, beside its log line
            stage.watcher.on_refused = metrics.MODEL_RELOAD_FAILURES.labels("classifier").inc
        return stage

    def reset(self) -> None:
        for holder in (self.store, self.ledger, self.fetchers, self.detect, self.classify):
            holder.reset()
