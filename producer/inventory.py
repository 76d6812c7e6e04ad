"""S3 Inventory reports as backfill shards: how a bucket of 100 M objects is walked without listing it.

A report is a ``manifest.json`` (``sourceBucket``, ``destinationBucket``, ``fileFormat`` CSV |
Parquet, ``fileSchema`` naming the CSV columns, ``files: [{key, size, MD5checksum}]``) beside gzip
CSV or Parquet data files. CSV keys are URL-encoded; Parquet keys are not. Each data file is one
shard: downloaded to a temporary file (memory is bounded by a batch of rows, disk by one file) and
read row by row; its checkpoint position is the number of rows handled. Rows carry the ETag, size
and LastModifiedDate when the report was configured with those fields. A report is a snapshot:
objects uploaded since it was written come through the event path (``vehicle-producer listen``).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

from vehicle_core.errors import ConfigError
from vehicle_core.storage import ObjectInfo, ObjectStore, normalize_etag, parse_s3_uri


@dataclass(frozen=True)
class Manifest:
    uri: str
    source_bucket: str
    data_bucket: str  # where the data files are (the manifest's destination bucket)
    file_format: str  # "CSV" | "Parquet"
    schema: tuple[str, ...]  # CSV column names
    files: tuple[str, ...]  # data file keys

    @classmethod
    def read(cls, store: ObjectStore, uri: str) -> Manifest:
        doc = store.get_json(uri)
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise ConfigError(f"{uri} is not an S3 Inventory manifest.json")
        fmt = str(doc.get("fileFormat", "")).upper()
        if fmt not in ("CSV", "PARQUET"):
            raise ConfigError(f"{uri}: inventory format {doc.get('fileFormat')!r} is not supported (CSV, Parquet)")
        dest = str(doc.get("destinationBucket") or parse_s3_uri(uri)[0])
        schema = tuple(c.strip() for c in str(doc.get("fileSchema", "")).split(",") if c.strip())
        if fmt == "CSV" and "Key" not in schema:
            raise ConfigError(f"{uri}: fileSchema names no Key column")
        return cls(uri=uri, source_bucket=str(doc.get("sourceBucket", "")), data_bucket=dest.split(":::")[-1],
                   file_format=fmt, schema=schema, files=tuple(str(f["key"]) for f in doc["files"]))

    def shards(self, store: ObjectStore, prefix: str = "") -> list[InventoryShard]:
        return [InventoryShard(store, self, key, prefix) for key in self.files]


@dataclass(frozen=True)
class InventoryShard:
    """One data file of a report; positions are row counts; ``prefix`` keeps only keys under it."""

    store: ObjectStore
    manifest: Manifest
    key: str
    prefix: str = ""

    @property
    def name(self) -> str:
        return f"s3://{self.manifest.data_bucket}/{self.key}"

    def items(self, after: str | None) -> Iterator[tuple[str, ObjectInfo]]:
        skip = int(after or 0)
        with tempfile.TemporaryDirectory(prefix="inventory-") as tmp:
            path = Path(tmp) / "data"
            self.store.download_file(self.name, path)
            for row, info in enumerate(self._rows(path), start=1):
                if row > skip and info.key.startswith(self.prefix):
                    yield str(row), info

    def results(self, results_bucket: str, results_prefix: str, after: str | None) -> None:
        return None  # rows are not promised in key order: no results listing can walk in step

    def _rows(self, path: Path) -> Iterator[ObjectInfo]:
        bucket = self.manifest.source_bucket
        if self.manifest.file_format == "CSV":
            with gzip.open(path, "rt", newline="", encoding="utf-8") as text:
                for values in csv.reader(text):
                    row = dict(zip(self.manifest.schema, values, strict=False))
                    if _current(row):
                        yield _info(bucket, row, encoded=True)
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
                for record in batch.to_pylist():
                    row = {_PARQUET_NAMES.get(k, k): v for k, v in record.items()}
                    if _current(row):
                        yield _info(bucket, row, encoded=False)

    def count(self) -> int:
        return sum(1 for _ in self.items(None))


#: Parquet inventories name their columns in snake case; CSV's fileSchema in Pascal case.
_PARQUET_NAMES = {"bucket": "Bucket", "key": "Key", "size": "Size", "last_modified_date": "LastModifiedDate",
                  "e_tag": "ETag", "version_id": "VersionId", "is_latest": "IsLatest", "is_delete_marker": "IsDeleteMarker"}


def _current(row: dict) -> bool:
    # Versioned reports list old versions and delete markers too: only the current version is work.
    return str(row.get("IsLatest", "true")).lower() != "false" and str(row.get("IsDeleteMarker", "")).lower() != "true"


def _info(bucket: str, row: dict, *, encoded: bool) -> ObjectInfo:
    key = unquote_plus(row["Key"]) if encoded else row["Key"]
    size = row.get("Size")
    return ObjectInfo(uri=f"s3://{row.get('Bucket') or bucket}/{key}", key=key, etag=normalize_etag(row.get("ETag") or None),
                      size=int(size) if size not in (None, "") else None,
                      last_modified=_time(row.get("LastModifiedDate")), version_id=row.get("VersionId") or None)


def _time(value) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float)):  # Parquet timestamps in milliseconds
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))

