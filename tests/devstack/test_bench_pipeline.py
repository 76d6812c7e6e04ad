"""Smoke test of ``python -m devstack.bench pipeline``: the whole stack on loopback, 8 small images."""

import json
import re
import subprocess
import sys

import pytest

from devstack.bench.figures import overhead_ratio, parse_table, redis_per_image, redis_rate
from tests.devstack.bench_run import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_bench_pipeline_prints_its_table_and_efficiency(classifier_artifact, tmp_path):
    done = run_bench(["devstack.bench.pipeline", "pipeline", "--images", "8", "--size", "320x240",
                      "--classifier", str(classifier_artifact), "--json", str(tmp_path / "bench.json"),
                      "--log-dir", str(tmp_path / "logs"), "--timeout", "400", "--rss-after", "4"], timeout=900)
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"efficiency \d+\.\d\d", lines[-1]), lines[-1]
    for row in ("end-to-end images/s", "in-process images/s", "latency", "S3 requests per image",
                "classify batches", "CPU-seconds per image: detect-worker-0"):
        assert any(row in line for line in lines), row
    fig = json.loads((tmp_path / "bench.json").read_text())
    assert fig["results"] == 8 and fig["inprocess"]["images"] == 8
    assert fig["inprocess"]["cpu_s_per_image"] > 0
    assert any("CPU-seconds per image: in-process run" in line for line in lines)
    assert sum(fig["classify_batches"].values()) >= 1
    assert sum(int(size) * n for size, n in fig["classify_batches"].items()) == 8  # every image classified once
    assert fig["s3_requests_per_image"]["GET"] >= 1  # each image was fetched through the proxy
    assert fig["e2e_images_per_s"] > 0 and fig["efficiency"] > 0
    # The soak figure: each worker's memory once 4 results were in, and at the end
    assert fig["worker_rss"]["after_images"] == [4, 8]
    assert {"detect-worker-0", "classify-worker-0"} <= set(fig["worker_rss"]["mib"])
    assert all(a > 50 and b > 50 for a, b in fig["worker_rss"]["mib"].values())
    assert any("RSS MiB of detect-worker-0 after 4 / 8 images" in line for line in lines)
    # What an image costs beyond the models, in rows a script reads back by name
    table = parse_table(lines)
    for row in COST_ROWS:  # the idle stack's rate is left out: on 8 images the ceiling may be beyond measure
        assert re.match(r"(\d+(\.\d+)?|n/a \(.+\)) ", table[row] + " "), (row, table[row])
    assert fig["redis_per_image"]["idle_per_s"]["seconds"] >= 3  # the default --redis-idle-s
    assert fig["overhead"]["ratio"] == pytest.approx(fig["overhead"]["workers_cpu_s"] / fig["inprocess"]["cpu_s_per_image"])


#: The rows of the cost table (issue 21) a script reads by name; each value starts with a number.
COST_ROWS = ("overhead ratio", "redis commands per image", "redis round trips per image", "redis CPU-µs per image",
             "broker ceiling (images/s per Redis core)", "S3 requests per image")


def test_fake_models_run_the_same_stack_and_report_what_each_image_costs(tmp_path):
    """``--fake-models``: the stack with fixed-cost stand-in models; the cost rows come out as numbers."""
    done = run_bench(["devstack.bench.pipeline", "pipeline", "--images", "6", "--size", "320x240",
                      "--fake-models", "--fake-cost", "2,0.5,2", "--redis-idle-s", "0",
                      "--json", str(tmp_path / "bench.json"), "--log-dir", str(tmp_path / "logs"), "--timeout", "300"],
                     timeout=600)
    table = parse_table(done.stdout.splitlines())
    for row in COST_ROWS:
        assert re.match(r"\d+(\.\d+)? ", table[row] + " "), (row, table[row])
    fig = json.loads((tmp_path / "bench.json").read_text())
    assert fig["results"] == 6 and fig["status"] == {"ok": 6}
    assert "fake models (2 CPU-ms per image detect, 0.5 per crop classify, 2 vehicles per image)" in fig["stack"]
    assert fig["overhead"]["ratio"] > 0 and fig["inprocess"]["images"] == 6
    redis = fig["redis_per_image"]
    # The images were taken off their queues (a BLMOVE that takes nothing, then the take step, several
    # per pop; BRPOP on a Redis < 6.2), and the bench's own INFO is left out.
    pops = redis["by_command"].get("blmove", 0) + redis["by_command"].get("brpop", 0)
    assert redis["commands"] > 2 and pops > 0 and "info" not in redis["by_command"]
    assert redis["cpu_us"] == redis["raw"]["cpu_us"] > 0 and redis["idle_per_s"] is None  # --redis-idle-s 0
    assert redis["ceiling_images_per_s"] == pytest.approx(1e6 / redis["cpu_us"])
    assert fig["s3_requests_per_image"]["GET"] >= 1 and fig["s3_requests_per_image"]["PUT"] >= 1
    assert sum(int(size) * n for size, n in fig["classify_batches"].items()) == 6


def test_redis_figures_per_image_are_deltas_of_the_servers_counters_without_the_bench_own_info():
    start = {"cpu_s": 10.0, "commands": {"brpop": {"calls": 5, "usec": 50}, "info": {"calls": 2, "usec": 40}}}
    end = {"cpu_s": 10.004, "commands": {"brpop": {"calls": 25, "usec": 250}, "lpush": {"calls": 20, "usec": 100},
                                         "info": {"calls": 9, "usec": 400}, "get": {"calls": 0, "usec": 0}}}
    out = redis_per_image(start, end, 10)
    assert out["by_command"] == {"brpop": 2.0, "lpush": 2.0} and out["commands"] == 4.0
    assert out["command_usec"] == pytest.approx(30.0) and out["cpu_us"] == pytest.approx(400.0)
    assert out["ceiling_images_per_s"] == pytest.approx(2500.0)
    assert redis_per_image(None, end, 10) is None
    # The idle stack's rate over the window's 2 s is left out (never below zero); the raw figures stay.
    idle = redis_rate(start, {"cpu_s": 10.0005, "commands": {"brpop": {"calls": 6, "usec": 60}}}, 1.0)
    assert idle["by_command"] == {"brpop": 1.0} and idle["cpu_us"] == pytest.approx(500.0)
    marginal = redis_per_image(start, end, 10, idle=idle, seconds=2.0)
    assert marginal["by_command"] == {"brpop": 1.8, "lpush": 2.0} and marginal["commands"] == pytest.approx(3.8)
    assert marginal["cpu_us"] == pytest.approx(300.0) and marginal["ceiling_images_per_s"] == pytest.approx(1e6 / 300)
    assert marginal["raw"]["cpu_us"] == pytest.approx(400.0) and marginal["raw"]["commands"] == 4.0
    assert redis_per_image(start, end, 10, idle=idle, seconds=100.0)["cpu_us"] == 0.0
    # Round trips: the server's read events (0 where a snapshot has none), the idle stack's left out likewise.
    assert marginal["round_trips"] == 0.0
    reads = redis_per_image({**start, "reads": 100}, {**end, "reads": 140}, 10,
                            idle={**idle, "round_trips": 5.0}, seconds=2.0)
    assert reads["round_trips"] == pytest.approx(3.0) and reads["raw"]["round_trips"] == pytest.approx(4.0)


def test_the_overhead_ratio_sums_the_worker_rows_only():
    cpu = {"detect-worker-0": 0.03, "detect-worker-1": 0.01, "classify-worker-0": 0.02, "producer-0": 0.5,
           "redis-server": 0.1}
    out = overhead_ratio(cpu, 0.04)
    assert out["ratio"] == pytest.approx(1.5) and out["workers_cpu_s"] == pytest.approx(0.06)
    assert overhead_ratio(cpu, None) is None
    assert overhead_ratio({**cpu, "classify-worker-0": None}, 0.04) is None


def test_a_run_that_fits_in_one_batch_reports_its_wall_clock_rate():
    """One classify batch writes one processed_at: no steady state to time (was: efficiency nan)."""
    from devstack.bench.figures import result_figures

    docs = {f"k{i}": {"processed_at": "2026-11-26T05:00:10.000Z", "status": "ok", "timings_ms": {"detect": 5.0}}
            for i in range(4)}
    uploaded = {f"k{i}": 1795669205.0 for i in range(4)}  # 2026-11-26T05:00:05Z
    fig = result_figures(docs, uploaded)
    assert fig["e2e_images_per_s"] == fig["wall_images_per_s"] == 4 / 5.0


class _ProcessingS3:
    """An S3 stand-in whose slow 'workers' answer half of the waiting images on every third LIST."""

    def __init__(self):
        self.waiting: list[str] = []
        self.results: dict[str, bytes] = {}
        self.most_waiting = 0
        self.lists = 0

    def put_object(self, Bucket, Key, Body, ContentType):  # noqa: N803 - boto3's names
        self.waiting.append(Key)
        self.most_waiting = max(self.most_waiting, len(self.waiting))

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket, Prefix):  # noqa: N803
        self.lists += 1
        half = (len(self.waiting) + 1) // 2 if self.lists % 3 == 0 else 0
        answered, self.waiting = self.waiting[:half], self.waiting[half:]
        for key in answered:
            self.results[f"results/{key}.json"] = json.dumps({"key": key, "status": "ok"}).encode()
        return [{"Contents": [{"Key": k} for k in sorted(self.results)]}]

    def get_object(self, Bucket, Key):  # noqa: N803
        import io

        return {"Body": io.BytesIO(self.results[Key])}


def test_an_upload_window_bounds_the_images_waiting_and_every_result_is_read():
    from devstack.bench.pipeline import ResultWatcher, upload_scenes

    s3 = _ProcessingS3()
    watcher = ResultWatcher(s3, "b", [], timeout=60, pace=0.0)
    scenes = [(f"bench/{i:03d}.jpg", b"x") for i in range(40)]
    seen = []
    watcher.track((k for k, _ in scenes), on_progress=seen.append)
    uploaded = upload_scenes(s3, "b", scenes, watcher, window=5)
    docs = watcher.wait_for(uploaded)
    assert s3.most_waiting == 5  # never more than the window waited for a result
    assert set(docs) == {k for k, _ in scenes} and all(d["key"] == k for k, d in docs.items())
    assert watcher.tracked_done == 40 and seen[-1] == 40 and seen == sorted(seen)
    burst = _ProcessingS3()
    upload_scenes(burst, "b", scenes)  # no window: one burst
    assert burst.most_waiting == 40


def test_the_result_watcher_lists_no_more_often_than_its_pace_allows(monkeypatch):
    """A LIST round that took d seconds is followed by none for pace × d seconds."""
    import devstack.bench.pipeline as bench

    clock = [100.0]

    class SlowList(_ProcessingS3):
        def paginate(self, Bucket, Prefix):  # noqa: N803
            clock[0] += 2.0  # each round takes 2 s of the endpoint
            return super().paginate(Bucket, Prefix)

    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])
    s3 = SlowList()
    watcher = bench.ResultWatcher(s3, "b", [], timeout=60, pace=4.0)
    watcher.poll()
    assert s3.lists == 1
    clock[0] += 7.9
    watcher.poll()
    assert s3.lists == 1  # 8 s (4 × 2 s) have not passed since that round ended
    clock[0] += 0.2
    watcher.poll()
    assert s3.lists == 2


def test_scenes_beyond_the_distinct_pool_cycle_under_keys_of_their_own():
    from devstack.bench.pipeline import make_scenes

    scenes = make_scenes(5, (64, 48), seed=3, prefix="bench/", distinct=2)
    assert [k for k, _ in scenes] == [f"bench/{i:05d}.jpg" for i in range(5)]
    assert len({b for _, b in scenes}) == 2 and scenes[0][1] == scenes[2][1] == scenes[4][1]
    assert len({b for _, b in make_scenes(3, (64, 48), seed=3, prefix="w/")}) == 3  # no pool: all differ


def test_the_bench_process_row_counts_its_own_cpu_not_its_childrens():
    """The stack's processes are the bench's children and have rows of their own (was: counted twice)."""
    from devstack.bench.pipeline import Meter

    meter = Meter([], "redis://127.0.0.1:1/0", None, None)
    row = "bench process (uploads, polling, S3 proxy)"
    before = meter.snapshot()["cpu"][row]
    burn = "import time\nwhile time.process_time() < 0.5: pass"
    subprocess.run([sys.executable, "-c", burn], check=True, timeout=60)  # a child spends 0.5 CPU-s
    after = meter.snapshot()["cpu"][row]
    assert 0 <= after - before < 0.25
