"""`python -m devstack.bench` prints a table of real measurements (a smoke run at tiny sizes)."""

from __future__ import annotations

import re

from devstack.bench import models as bench
from devstack.bench.__main__ import dispatch


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


def test_one_entry_dispatches_every_benchmark():
    assert dispatch([]) == ("models", [])
    assert dispatch(["--repeats", "1"]) == ("models", ["--repeats", "1"])
    assert dispatch(["models", "--repeats", "1"]) == ("models", ["--repeats", "1"])
    assert dispatch(["pipeline", "--images", "8"]) == ("pipeline", ["pipeline", "--images", "8"])
    assert dispatch(["enqueue", "--keys", "9"]) == ("enqueue", ["--start-redis", "--keys", "9"])
    assert dispatch(["enqueue", "--broker", "redis://h/0"]) == ("enqueue", ["--broker", "redis://h/0"])
    assert dispatch(["backfill", "--keys", "5"]) == ("backfill", ["--keys", "5"])
