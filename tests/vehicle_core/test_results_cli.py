"""vehicle-results against a real S3 server (moto): summary, CSV/Parquet export, gallery."""

import csv
import re

import pytest

from tests.vehicle_core.results_fixtures import upload
from vehicle_core.cli.results import main
from vehicle_core.results.reading import iter_result_documents
from vehicle_core.storage import ObjectStore


@pytest.fixture
def results_bucket(aws_env, s3, bucket):
    upload(s3, bucket)
    return bucket


def test_documents_are_read_in_key_order_up_to_the_limit_skipping_other_objects(s3, results_bucket):
    keys = [key for key, _ in iter_result_documents(ObjectStore(client=s3), results_bucket, "results/")]
    assert keys == sorted(keys) and len(keys) == 5
    assert len(list(iter_result_documents(ObjectStore(client=s3), results_bucket, "results/", limit=2))) == 2


def test_summary_counts_statuses_labels_error_codes_and_models(results_bucket, capsys):
    assert main(["summary", f"s3://{results_bucket}/results/"]) == 0
    out = capsys.readouterr().out
    assert "results: 5" in out
    assert re.search(r"^  ok\s+2$", out, re.M) and re.search(r"^  error\s+2$", out, re.M)
    assert re.search(r"^  undecodable\s+1$", out, re.M)
    every = out.split("label of every vehicle:")[1].split("error code:")[0]
    assert re.search(r"sedan\s+2", every) and re.search(r"bus\s+1", every)
    assert "classifier demo-resnet50 v7" in out
    assert re.search(r"^  0\.9-1\.0\s+1 ", out, re.M)  # 0.93
    assert re.search(r"^  0\.8-0\.9\s+1 ", out, re.M)  # 0.81


def test_csv_export_has_one_row_per_vehicle_and_one_per_result_without_any(results_bucket, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["export", f"s3://{results_bucket}/results/", "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6  # a: 1, b: 2, c, d, e: 1 each
    b = [r for r in rows if r["source_key"] == "incoming/b.jpg"]
    assert [r["label"] for r in b] == ["bus", "sedan"] and b[0]["primary_label"] == "sedan"
    d = next(r for r in rows if r["source_key"] == "incoming/d.jpg")
    assert d["error_code"] == "undecodable" and d["vehicle_index"] == ""


def test_parquet_export_reads_back_with_pyarrow(results_bucket, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"
    assert main(["export", f"s3://{results_bucket}/results/", "--format", "parquet", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 6
    assert sorted(v for v in table.column("confidence").to_pylist() if v is not None) == [0.55, 0.81, 0.93]


def test_gallery_has_a_card_per_result_and_says_when_a_source_is_gone(s3, results_bucket, tmp_path, capsys):
    s3.delete_object(Bucket=results_bucket, Key="incoming/a.jpg")
    out = tmp_path / "g.html"
    assert main(["gallery", f"s3://{results_bucket}/results/", "--limit", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    page = out.read_text()
    assert page.count('<figure class="card"') == 4
    assert page.count("data:image/jpeg;base64,") == 4
    assert "<code>undecodable</code>" in page
    assert "demo-resnet50 v7" in page
    gone = page.split('title="incoming/a.jpg"')[0].rsplit("data:image/jpeg;base64,", 1)[1].split('"')[0]
    assert thumbnail(gone).mean() < 65  # the dark "source is gone" card, not the grey photo (90)
    assert thumbnail(page.split('title="incoming/b.jpg"')[0].rsplit("base64,", 1)[1].split('"')[0]).mean() > 70


def thumbnail(b64: str):
    import base64

    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
