"""`python -m vehicle_core.bench` prints a table of real measurements (a smoke run at tiny sizes)."""

from __future__ import annotations

import re

from vehicle_core import bench


def test_bench_prints_one_row_per_batch_size_and_crop_message_sizes(capsys):
    bench.main(["--skip-classifier", "--detector-batches", "1,2", "--repeats", "1", "--image-size", "160",
                "--crop-messages", "3"])
    out = capsys.readouterr().out
    rows = re.findall(r"\| detector (\S+)\s+\| (\w+)\s+\|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|", out)
    assert [(name, int(batch)) for name, _, batch, _, _ in rows] == [("synthetic-maskrcnn-tiny", 1),
                                                                    ("synthetic-maskrcnn-tiny", 2)]
    assert all(float(ips) > 0 and float(ms) > 0 for *_, ips, ms in rows)
    sizes = re.findall(r"\| (\d+x\d+) \| (\d+) KB \| ([\d.]+) \| ([\d.]+) KB", out)
    assert [s[0] for s in sizes] == ["320x240", "1280x960"]
    assert all(float(msg) > 0.5 for *_, msg in sizes)  # at least one JPEG crop per message


def test_bench_pipeline_and_enqueue_run_their_commands():
    assert bench.delegated_argv(["pipeline", "--images", "8"]) == ["-m", "devstack.bench", "pipeline", "--images", "8"]
    assert bench.delegated_argv(["enqueue", "--keys", "9"]) == ["-m", "producer.bench_enqueue", "--start-redis",
                                                               "--keys", "9"]
    assert bench.delegated_argv(["enqueue", "--broker", "redis://h/0"])[2:] == ["--broker", "redis://h/0"]
    assert bench.delegated_argv(["--repeats", "1"]) is None


def test_bench_enqueue_prints_its_table_through_the_library_command():
    import shutil
    import subprocess
    import sys

    from tests.conftest import skip_or_fail

    if shutil.which("redis-server") is None:
        skip_or_fail("no redis-server")
    out = subprocess.run([sys.executable, "-m", "vehicle_core.bench", "enqueue", "--keys", "600", "--single-keys", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^enqueue \d+ keys/s$", out.stdout.strip().splitlines()[-1])
    assert re.search(r"batched \(enqueue_images, \d+/trip\)\s+600 ", out.stdout)
