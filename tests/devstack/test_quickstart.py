"""`make quickstart` (`python -m devstack.quickstart`): the training loop end to end against a loopback moto S3.

A tiny run (10 crops per class): it checks the plumbing (data to S3, streaming training, report,
publish, the pointer a worker follows), not accuracy; docs/training.md has the full-size figures.
"""

from __future__ import annotations

import json
import os

import pytest

from devstack import quickstart

pytestmark = pytest.mark.slow


def test_quickstart_trains_evaluates_and_publishes_what_workers_load(tmp_path, capsys):
    out = tmp_path / "qs"
    env_before = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    code = quickstart.main(["--bucket", "quickstart-test", "--out", str(out), "--per-class", "10"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    # The loopback server is gone, and so are its endpoint and test credentials from this process
    assert {k: v for k, v in os.environ.items() if k.startswith("AWS_")} == env_before
    # Published under the registry, and the 'current' pointer resolves to exactly that version
    assert summary["registry"] == "s3://quickstart-test/models/classifier"
    assert summary["served_by_workers"] == summary["version"]
    assert f"/models/classifier/{summary['version']}/" in summary["published"]
    assert summary["report_s3"].startswith(f"s3://quickstart-test/quickstart/reports/{summary['version']}")
    # The report: accuracy table, confusion matrix image, per-class scores for the six classes
    report = (out / "report" / "report.md").read_text()
    assert "confusion" in report.lower()
    assert (out / "report" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 6 and 0.0 <= summary["test_accuracy"] <= 1.0
