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
            "--log-dir", str(tmp_path / "logs"), "--timeout", "400"]
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
