"""``python -m devstack.bench broker``: the workers' broker code alone, on a throwaway redis-server, at two rates."""

import json

import pytest

from tests.devstack.bench_run import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HEADER = ["rate asked (img/s)", "images/s", "redis commands per image", "redis round trips per image",
          "redis CPU-µs per image", "redis core busy", "broker ceiling (images/s per Redis core)"]


def test_bench_broker_reports_what_each_image_costs_the_broker_at_each_rate(tmp_path):
    done = run_bench(["devstack.bench", "broker", "--rates", "50,max", "--images", "400",
                      "--json", str(tmp_path / "broker.json"), "--timeout", "240"], timeout=600)

    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| rate asked"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == HEADER
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines
                                               if line.startswith("| ") and not line.startswith(("| rate", "| ---")))}
    assert set(rows) == {"50", "max"}, rows
    for cells in rows.values():
        assert all(cell.rstrip("%").replace(".", "", 1).isdigit() for cell in cells), cells

    fig = json.loads((tmp_path / "broker.json").read_text())
    paced, fastest = fig["windows"]
    # The paced window enqueued 30 s worth at most (400 images at 50/s: 8 s) and kept to its pace.
    assert paced["images"] == 400 and paced["images_per_s"] <= 50 * 1.2
    assert fastest["images"] == 400 and fastest["images_per_s"] > paced["images_per_s"]
    for window in (paced, fastest):
        by = window["redis"]["by_command"]
        # Each batch is marked in flight once per stage (the crash ledger's HSET + EXPIREAT: no key per
        # image), taken off both queues by batched pops, recorded and forgotten in batches, and handed
        # on: the workers' commands.
        assert "set" not in by and 0 < by["expireat"] <= 2.0, by
        assert by["hset"] == pytest.approx(by["zadd"] + by["expireat"], abs=0.01), by  # records + marks
        # a pop: a BLMOVE that takes nothing, then the take step (LRANGE, LTRIM, ZADD, HSET in one script;
        # a take after a wait that timed out finds nothing, runs its LRANGE alone, and the idle rate's
        # are left out, so LRANGE is not counted with the rest)
        assert 0 < by["blmove"] <= 2.0 and by["ltrim"] == by["zadd"] and by["lrange"] > 0, by
        assert "blmpop" not in by and 0 < by["zadd"] <= 2.0 and 0 < by["zrem"] <= 2.0, by
        assert 0 < by["lpush"] <= 1.1, by  # hand-on and enqueue, one LPUSH per batch of images
        assert window["round_trips_per_image"] > 0 and window["redis"]["cpu_us"] > 0
        assert "smembers" not in by  # published straight to the queue, as the workers' routes do
