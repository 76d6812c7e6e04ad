"""Smoke test of ``python -m devstack.bench pipeline``: the whole stack on loopback, 8 small images."""

import json
import os
import re
import subprocess
import sys

import pytest

from devstack.servers import redis_server_binary
from tests.conftest import skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_bench_pipeline_prints_its_table_and_efficiency(classifier_artifact, tmp_path):
    try:
        redis_server_binary()
    except RuntimeError as exc:
        skip_or_fail(str(exc))
    argv = [sys.executable, "-m", "devstack.bench", "pipeline", "--images", "8", "--size", "320x240",
            "--classifier", str(classifier_artifact), "--json", str(tmp_path / "bench.json"),
            "--log-dir", str(tmp_path / "logs"), "--timeout", "400", "--rss-after", "4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VP_"))}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"efficiency \d+\.\d\d", lines[-1]), lines[-1]
    for row in ("end-to-end images/s", "in-process images/s", "latency", "S3 requests per image",
                "classify batches", "CPU-seconds per image: detect-worker-0"):
        assert any(row in line for line in lines), row
    fig = json.loads((tmp_path / "bench.json").read_text())
    assert fig["results"] == 8 and fig["inprocess"]["images"] == 8
    assert sum(fig["classify_batches"].values()) >= 1
    assert sum(int(size) * n for size, n in fig["classify_batches"].items()) == 8  # every image classified once
    assert fig["s3_requests_per_image"]["GET"] >= 1  # each image was fetched through the proxy
    assert fig["e2e_images_per_s"] > 0 and fig["efficiency"] > 0
    # The soak figure: each worker's memory once 4 results were in, and at the end
    assert fig["worker_rss"]["after_images"] == [4, 8]
    assert {"detect-worker-0", "classify-worker-0"} <= set(fig["worker_rss"]["mib"])
    assert all(a > 50 and b > 50 for a, b in fig["worker_rss"]["mib"].values())
    assert any("RSS MiB of detect-worker-0 after 4 / 8 images" in line for line in lines)


def test_a_run_that_fits_in_one_batch_reports_its_wall_clock_rate():
    """One classify batch writes one processed_at: no steady state to time (was: efficiency nan)."""
    from devstack.bench_figures import result_figures

    docs = {f"k{i}": {"processed_at": "2026-11-26T05:00:10.000Z", "status": "ok", "timings_ms": {"detect": 5.0}}
            for i in range(4)}
    uploaded = {f"k{i}": 1795669205.0 for i in range(4)}  # 2026-11-26T05:00:05Z
    fig = result_figures(docs, uploaded)
    assert fig["e2e_images_per_s"] == fig["wall_images_per_s"] == 4 / 5.0
