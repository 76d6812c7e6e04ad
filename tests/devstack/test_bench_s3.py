"""``python -m devstack.bench s3``: the caller's CPU per S3 GET and PUT, lean path and boto3, as a user runs it."""

import pytest

from tests.devstack.bench_run import run_bench

pytestmark = [pytest.mark.integration]


def test_bench_s3_prints_cpu_per_call_for_both_paths_and_no_call_is_sent_twice():
    done = run_bench(["devstack.bench", "s3", "--calls", "20", "--rounds", "1", "--image-bytes", "5000"],
                     timeout=300)
    lines = done.stdout.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("| ") and not line.startswith(("| call", "| ---"))]
    assert sorted((verb, mode) for verb, mode, *_ in rows) == [("GET", "boto3"), ("GET", "lean"), ("PUT", "boto3"),
                                                                ("PUT", "lean")]
    for _verb, _mode, median, spread, requests in rows:
        low, high = (float(x) for x in spread.split("–"))
        assert 0 < low <= float(median) <= high
        assert requests == "1.00"  # the lean path's calls were answered on it, none redone through boto3
    assert sum(line.startswith(("GET: lean / boto3", "PUT: lean / boto3")) for line in lines) == 2
