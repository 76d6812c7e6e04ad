"""Where a backfill stopped: per listing shard, the last position fully handled (enqueued or skipped).

A shard is one key-ordered stream (the whole prefix, one sub-prefix of a fan-out, or one S3
Inventory data file); its position is the last key handled (the listing resumes with ``StartAfter``)
or, for an inventory file, the number of rows handled. The document is rewritten whole every
``producer.checkpoint_every`` listed keys, atomically (a local file by rename, S3 by one PUT), and
only after the messages before that position reached Redis: a run killed at any instant re-sends at
most what it handled since the last save (the idempotent workers absorb the repeats).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from vehicle_core.errors import ConfigError
from vehicle_core.storage import ObjectStore, is_s3

FORMAT = 1


class Checkpoint:
    """Positions per shard, loaded from ``location`` (a path or ``s3://`` URI; None: kept in memory only)."""

    def __init__(self, location: str | None, store: ObjectStore, *, source: str, every: int,
                 read_only: bool = False) -> None:
        self.location = location
        self.read_only = read_only
        self.store = store
        self.source = source  # what is walked: a refused resume of another prefix is better than a silent one
        self.every = every
        self.saves = 0
        self._positions: dict[str, str] = {}
        self._done: set[str] = set()
        self._since_save = 0
        self._lock = threading.Lock()
        if location:
            self._load()

    def position(self, shard: str) -> str | None:
        """Where ``shard`` resumes (None: from its start)."""
        return self._positions.get(shard)

    def is_done(self, shard: str) -> bool:
        return shard in self._done

    @property
    def resumed(self) -> bool:
        return bool(self._positions or self._done)

    def advance(self, shard: str, position: str | None, keys: int) -> None:
        """``keys`` more keys of ``shard`` are handled, up to ``position``; save when a window is full."""
        with self._lock:
            if position is not None:
                self._positions[shard] = position
            self._since_save += keys
            if self._since_save >= self.every:
                self._save()

    def finish(self, shard: str) -> None:
        """``shard`` is walked to its end; saved at once (a finished shard is never listed again)."""
        with self._lock:
            self._done.add(shard)
            self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self._since_save = 0
        if not self.location or self.read_only:
            return
        doc = {"format": FORMAT, "source": self.source, "positions": self._positions, "done": sorted(self._done)}
        body = json.dumps(doc, ensure_ascii=False, indent=1).encode()
        if is_s3(self.location):
            self.store.put(self.location, body, content_type="application/json")
        else:
            path = Path(self.location)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(body)
            os.replace(tmp, path)  # atomic: a kill leaves the old document or the new one, never half
        self.saves += 1

    def _load(self) -> None:
        if is_s3(self.location):
            doc = self.store.get_json(self.location)
        else:
            path = Path(self.location)
            doc = json.loads(path.read_text()) if path.is_file() else None
        if doc is None:
            return
        if doc.get("format") != FORMAT or doc.get("source") != self.source:
            raise ConfigError(f"checkpoint {self.location} belongs to {doc.get('source')!r}, not {self.source!r}: "
                              "pass another --checkpoint, or delete it to start over")
        self._positions = dict(doc.get("positions") or {})
        self._done = set(doc.get("done") or [])
