"""`vehicle-results summary --format json` (issue 20): the text summary's counts as one JSON object."""

import json

import pytest

from tests.vehicle_core.results_fixtures import upload
from vehicle_core.cli.results import main


@pytest.fixture
def results_bucket(aws_env, s3, bucket):
    upload(s3, bucket)
    return bucket


def test_summary_as_json_has_the_same_counts_as_the_text(results_bucket, capsys):
    assert main(["summary", f"s3://{results_bucket}/results/", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["uri"] == f"s3://{results_bucket}/results/" and doc["results"] == 5
    assert doc["status"] == {"ok": 2, "error": 2, **{k: v for k, v in doc["status"].items() if k not in ("ok", "error")}}
    assert doc["error_code"]["undecodable"] == 1
    assert doc["label"]["sedan"] == 2 and doc["label"]["bus"] == 1
    assert any(name.startswith("classifier demo-resnet50 v7") for name in doc["models"])
    bins = {(b["from"], b["to"]): b["count"] for b in doc["confidence"]}
    assert bins[(0.9, 1.0)] == 1 and bins[(0.8, 0.9)] == 1 and len(bins) == 10


def test_summary_refuses_an_unknown_format(results_bucket, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["summary", f"s3://{results_bucket}/results/", "--format", "yaml"])
    assert exit_.value.code == 2
