"""Result documents as numbers and rows: a streaming summary, and CSV/Parquet export for Athena/pandas.

Both consume documents one at a time (an iterator from :mod:`vehicle_core.results.reading`) and keep
only counters or one batch of rows, so a bucket of millions of results fits in a few MB.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: One row per vehicle; a document without vehicles (no_vehicle, error) still gets one row, with
#: ``vehicle_index`` empty, so that every result is counted by a query over the table.
COLUMNS = (
    "result_key", "source_bucket", "source_key", "source_etag", "status", "error_code", "error_message",
    "image_width", "image_height", "vehicle_index", "label", "confidence", "detector_class", "detector_score",
    "x1", "y1", "x2", "y2", "primary_label", "detector_model", "detector_version", "classifier_model",
    "classifier_version", "processed_at",
)
_FLOATS = {"confidence", "detector_score", "x1", "y1", "x2", "y2"}
_INTS = {"image_width", "image_height", "vehicle_index"}
HISTOGRAM_BINS = 10


@dataclass
class Summary:
    """Counts by status, label and error code, a histogram of vehicle confidences, models seen."""

    documents: int = 0
    statuses: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)  # every vehicle's label
    primary_labels: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)  # "role name version" -> documents
    confidence_bins: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)

    def add(self, document: dict[str, Any]) -> None:
        """Count one result document."""
        self.documents += 1
        self.statuses[document.get("status", "?")] += 1
        if document.get("label"):
            self.primary_labels[document["label"]] += 1
        if document.get("status") == "error":
            self.errors[(document.get("error") or {}).get("code", "?")] += 1
        for vehicle in document.get("vehicles") or []:
            self.labels[vehicle.get("label", "?")] += 1
            conf = float(vehicle.get("confidence") or 0.0)
            self.confidence_bins[min(HISTOGRAM_BINS - 1, max(0, int(conf * HISTOGRAM_BINS)))] += 1
        for role, info in sorted((document.get("models") or {}).items()):
            self.models[f"{role} {info.get('name')} {info.get('version')}"] += 1

    def to_dict(self) -> dict[str, Any]:
        """The same counts as plain data (``vehicle-results summary --format json``): counters as
        {name: count}, most common first; the histogram as [{"from", "to", "count"}]."""
        return {
            "results": self.documents,
            "status": dict(self.statuses.most_common()),
            "primary_label": dict(self.primary_labels.most_common()),
            "label": dict(self.labels.most_common()),
            "error_code": dict(self.errors.most_common()),
            "models": dict(self.models.most_common()),
            "confidence": [{"from": i / HISTOGRAM_BINS, "to": (i + 1) / HISTOGRAM_BINS, "count": n}
                           for i, n in enumerate(self.confidence_bins)],
        }

    def format(self) -> str:
        """A plain-text report: tables and a bar chart a terminal shows as is."""
        lines = [f"results: {self.documents}"]
        for title, counts in (("status", self.statuses), ("label of the primary vehicle", self.primary_labels),
                              ("label of every vehicle", self.labels), ("error code", self.errors),
                              ("models (documents)", self.models)):
            lines.append(f"\n{title}:")
            lines += [f"  {k:<40} {v:>8}" for k, v in counts.most_common()] or ["  (none)"]
        lines.append("\nvehicle confidence:")
        top = max(self.confidence_bins) or 1
        for i, n in enumerate(self.confidence_bins):
            lo, hi = i / HISTOGRAM_BINS, (i + 1) / HISTOGRAM_BINS
            lines.append(f"  {lo:.1f}-{hi:.1f} {n:>8}  {'#' * round(40 * n / top)}")
        return "\n".join(lines)


def rows(key: str, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The export rows of one document (see :data:`COLUMNS`)."""
    source = document.get("source") or {}
    error = document.get("error") or {}
    image = document.get("image") or {}
    models = document.get("models") or {}
    common = {
        "result_key": key, "source_bucket": source.get("bucket"), "source_key": source.get("key"),
        "source_etag": source.get("etag"), "status": document.get("status"), "error_code": error.get("code"),
        "error_message": error.get("message"), "image_width": image.get("width"), "image_height": image.get("height"),
        "primary_label": document.get("label"), "processed_at": document.get("processed_at"),
        "detector_model": (models.get("detector") or {}).get("name"),
        "detector_version": (models.get("detector") or {}).get("version"),
        "classifier_model": (models.get("classifier") or {}).get("name"),
        "classifier_version": (models.get("classifier") or {}).get("version"),
    }
    vehicles = document.get("vehicles") or []
    if not vehicles:
        yield {**dict.fromkeys(COLUMNS), **common}
    for i, vehicle in enumerate(vehicles):
        x1, y1, x2, y2 = vehicle.get("box") or (None,) * 4
        yield {**common, "vehicle_index": i, "label": vehicle.get("label"), "confidence": vehicle.get("confidence"),
               "detector_class": vehicle.get("detector_class"), "detector_score": vehicle.get("detector_score"),
               "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def export_csv(documents: Iterable[tuple[str, dict[str, Any]]], out: Path) -> int:
    """Write every document's rows to ``out`` as CSV (header first); returns the number of rows."""
    count = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for key, document in documents:
            for row in rows(key, document):
                writer.writerow(row)
                count += 1
    return count


def export_parquet(documents: Iterable[tuple[str, dict[str, Any]]], out: Path, batch_rows: int = 5000) -> int:
    """Write the rows to ``out`` as Parquet, ``batch_rows`` at a time (one row group each); needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from vehicle_core.errors import ConfigError

        raise ConfigError("--format parquet needs pyarrow: pip install 'vehicle-pipeline[parquet]'") from None
    schema = pa.schema([(c, pa.float64() if c in _FLOATS else pa.int64() if c in _INTS else pa.string())
                        for c in COLUMNS])
    count = 0
    batch: list[dict[str, Any]] = []
    with pq.ParquetWriter(str(out), schema) as writer:
        for key, document in documents:
            batch.extend(rows(key, document))
            if len(batch) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        # An empty export still gets the schema, so readers see the columns.
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return count + len(batch)
