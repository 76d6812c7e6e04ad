"""S3 Inventory reports (CSV and Parquet, as AWS documents them) and ``vehicle-producer reconcile``."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from devstack.stack import stack_env
from producer.backfill import BackfillOptions, run_backfill
from producer.events import KeyFilter
from producer.inventory import Manifest
from tests.integration.stack import queued_tasks
from tests.producer.test_backfill import _put_many, _write_result
from tests.producer.test_backfill_stream import _etags
from vehicle_core.storage import ObjectStore
from workers.messages import sender_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEYS = KeyFilter(image_suffixes=(".jpg",), results_prefix="results/")
SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker"
#: Current versions; then an old version and a delete marker the backfill must not send.
ROWS = [("inv/a b+c é.jpg", "true", "false"), ("inv/plain.jpg", "true", "false"), ("inv/notes.txt", "true", "false"),
        ("inv/old.jpg", "false", "false"), ("inv/deleted.jpg", "true", "true")] + [
        (f"inv/{i:03d}.jpg", "true", "false") for i in range(150)]


def _write_report(s3, bucket: str, fmt: str) -> str:
    """A report laid out as S3 Inventory writes one: data files, then manifest.json naming them."""
    base = f"inventory/{bucket}/daily/2026-11-26T01-00Z"
    records = [{"Bucket": bucket, "Key": key, "Size": 3, "LastModifiedDate": "2026-11-25T10:00:00.000Z",
                "ETag": f"{i:032x}", "IsLatest": latest, "IsDeleteMarker": marker}
               for i, (key, latest, marker) in enumerate(ROWS)]
    halves = [records[: len(records) // 2], records[len(records) // 2 :]]
    files = []
    for n, part in enumerate(halves):
        body = _csv_gz(part) if fmt == "CSV" else _parquet(part)
        key = f"inventory/{bucket}/daily/data/{n}.{'csv.gz' if fmt == 'CSV' else 'parquet'}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "version": "2016-11-30",
                "creationTimestamp": "1764118800000", "fileFormat": fmt, "files": files}
    if fmt == "CSV":
        manifest["fileSchema"] = SCHEMA
    else:
        manifest["fileSchema"] = "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); }"
    s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/{base}/manifest.json"


def _csv_gz(records: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL)
    for r in records:  # CSV inventories URL-encode keys
        writer.writerow([r["Bucket"], quote_plus(r["Key"], safe="/"), r["Size"], r["LastModifiedDate"], r["ETag"],
                         r["IsLatest"], r["IsDeleteMarker"]])
    return gzip.compress(text.getvalue().encode())


def _parquet(records: list[dict]) -> bytes:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"bucket": [r["Bucket"] for r in records], "key": [r["Key"] for r in records],
                      "size": [r["Size"] for r in records], "e_tag": [r["ETag"] for r in records],
                      "is_latest": [r["IsLatest"] == "true" for r in records],
                      "is_delete_marker": [r["IsDeleteMarker"] == "true" for r in records]})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_backfill_from_an_inventory_report_lists_nothing(s3, bucket, detect, fmt):
    client, qname, settings = detect
    uri = _write_report(s3, bucket, fmt)
    store = ObjectStore(client=s3)
    manifest = Manifest.read(store, uri)
    opts = BackfillOptions.from_settings(settings, manifest.source_bucket, keys=KEYS)
    stats = run_backfill(store, sender_app(settings.broker), opts, manifest.shards(store, "inv/"))
    expected = ["inv/a b+c é.jpg", "inv/plain.jpg"] + [f"inv/{i:03d}.jpg" for i in range(150)]
    assert sorted(a[0]["key"] for _, a, _ in queued_tasks(client, qname)) == sorted(expected)
    assert stats.enqueued == len(expected) and len(manifest.files) == 2
    assert store.requests["ListObjectsV2"] == 0


def test_reconcile_finds_missing_stale_and_retriable_results_and_nothing_else(s3, bucket, aws_env, detect):
    # Given: 100 images; results: 60 current, 5 final errors, 10 for an earlier upload, 8 retriable
    # errors, 4 retriable errors since answered (a newer final result beside a stale marker); 13 missing
    client, qname, settings = detect
    images = [f"r/{i:03d}.jpg" for i in range(100)]
    _put_many(s3, bucket, images + ["r/readme.txt"])
    etags = _etags(s3, bucket, "r/")
    for key in images[:60]:
        _write_result(s3, bucket, key, etags[key])
    for key in images[60:65]:
        _write_result(s3, bucket, key, etags[key], "error", "undecodable")
    for key in images[65:75]:
        _write_result(s3, bucket, key, etags[key])
        s3.put_object(Bucket=bucket, Key=key, Body=b"replaced")
    for key in images[75:83]:
        _write_result(s3, bucket, key, etags[key], "error", "transient")
    for key in images[83:87]:
        _write_result(s3, bucket, key, etags[key], "error", "access_denied")
        _write_result(s3, bucket, key, etags[key])
    env = stack_env(broker_url=settings.broker.url, aws=aws_env, extra={"VP_BROKER__DETECT_QUEUE": qname})
    argv = [sys.executable, "-m", "producer.cli", "reconcile", f"s3://{bucket}/r/"]
    # When
    found = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # Then: exit 1, a line per image without a current result, counts per reason
    assert found.returncode == 1, found.stderr
    lines = sorted(line.split("\t") for line in found.stdout.splitlines())
    expected = ([["missing", f"s3://{bucket}/{k}"] for k in images[87:]]
                + [["retriable", f"s3://{bucket}/{k}"] for k in images[75:83]]
                + [["stale", f"s3://{bucket}/{k}"] for k in images[65:75]])
    assert lines == sorted(expected)
    assert "without a current result 31 (missing 13, stale 10, retriable 8)" in found.stderr
    assert "GetObject" not in found.stderr
    # When: --enqueue sends them; then their results are written and reconcile exits 0
    sent = subprocess.run(argv + ["--enqueue", "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sent.returncode == 1 and "enqueued 31" in sent.stderr
    assert sorted(a[0]["key"] for _, a, _ in queued_tasks(client, qname)) == sorted(k.split("/", 3)[3] for _, k in expected)
    for key in images[65:]:
        _write_result(s3, bucket, key, _etags(s3, bucket, key)[key])
    clean = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "without a current result 0" in clean.stderr



def test_the_cli_walks_an_inventory_and_refuses_skip_done_with_it(s3, bucket, aws_env, detect):
    client, qname, settings = detect
    uri = _write_report(s3, bucket, "CSV")
    env = stack_env(broker_url=settings.broker.url, aws=aws_env, extra={"VP_BROKER__DETECT_QUEUE": qname})
    argv = [sys.executable, "-m", "producer.cli", "backfill", "--inventory", uri, "--no-progress"]
    refused = subprocess.run(argv + ["--skip-done"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--skip-done needs a key-ordered listing" in refused.stderr
    done = subprocess.run(argv + ["--count-first"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "enqueued 152" in done.stdout and client.llen(qname) == 152
