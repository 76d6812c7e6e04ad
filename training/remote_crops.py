"""``vehicle-train crop`` on the detect workers: a training dataset cropped by the detector in service.

The client (:class:`CeleryChunks`, handed to ``training.crops.crop_dataset`` as its
``map_chunks``) sends one ``crop_dataset_chunk`` task per chunk of 16 images to the detect queue, beside
the image tasks. A detect worker crops them with the ``DetectStage`` it already holds (no second model
in memory; the crops come from the detector that serves results; ``workers.dataset_crops``) and writes the chunk's rows to
``DST/_parts/<run>/<n>.json``. The app has no result backend, so S3 carries the answers, as it does for
images; the client waits for every part, gathers them, deletes them and writes ``manifest.csv`` and
``report.json`` as the local path does.

Both roots must be ``s3://`` URIs (a worker on another machine cannot see a local folder). Tasks are
``acks_late`` like every task here: a worker that dies mid-chunk has it redelivered, and rewriting the
same crops and part is harmless. A chunk that fails as a whole comes back with each image skipped and
the error named, so nothing is silently left out.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from training.remote import find_workers, wait_for
from vehicle_core.config import Settings
from vehicle_core.storage import ObjectStore
from workers.messages import CROP_CHUNK_TASK, sender_app

log = logging.getLogger(__name__)


def find_detect_workers(settings: Settings, *, timeout_s: float = 2.0) -> list[str]:
    """Names of the workers consuming the detect queue now; empty when none answers or Redis is down."""
    return find_workers(settings, settings.broker.detect_queue, timeout_s=timeout_s)


class CeleryChunks:
    """``map_chunks`` for ``crop_dataset``: the chunks run as tasks on the detect workers."""

    def __init__(self, settings: Settings, workers: list[str], *, stall_timeout_s: float = 600.0,
                 poll_s: float = 1.0) -> None:
        self.settings = settings
        self.app = sender_app(settings.broker)
        self.store = ObjectStore(settings.storage)
        self.stall_timeout_s = stall_timeout_s
        self.poll_s = poll_s
        self.description = f"celery: detect queue '{settings.broker.detect_queue}', workers {', '.join(workers)}"

    def __call__(self, _fn, args: list[tuple]) -> list[list[dict[str, Any]]]:
        if not args:
            return []
        dst_root = args[0][1].rstrip("/")
        if not dst_root.startswith("s3://"):
            raise ValueError(f"detect workers write to S3 only; {dst_root!r} is not an s3:// URI")
        parts = f"{dst_root}/_parts/{uuid.uuid4().hex[:12]}"
        uris = [f"{parts}/{i:05d}.json" for i in range(len(args))]
        for (chunk, dst, _settings, truth), uri in zip(args, uris, strict=True):
            self.app.send_task(CROP_CHUNK_TASK, args=[chunk, dst, truth, uri])  # routed to the detect queue
        log.info("sent %d chunks to the detect queue; waiting for %s", len(uris), parts)
        self._wait(parts, set(uris))
        out = [json.loads(self.store.read(uri)) for uri in uris]
        for uri in uris:
            self.store.delete(uri)
        return out

    def _wait(self, parts: str, expected: set[str]) -> None:
        wait_for(expected, lambda: {info.uri for info in self.store.list(parts + "/")},
                 stall_timeout_s=self.stall_timeout_s, poll_s=self.poll_s, what="cropped chunks",
                 hint="are the detect workers up? (Flower shows the queue)")
