"""``devstack/bench/gpu_check.sh``: its CPU dry run (every step at tiny sizes) so the GPU check cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.bench.gpu_check import Step, bench_rows, summary
from devstack.servers import redis_server_binary
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_the_dry_run_goes_through_every_step_on_the_cpu(tmp_path):
    try:
        redis_server_binary()
        import detectron2  # noqa: F401
    except (RuntimeError, ImportError) as exc:
        skip_or_fail(f"the dry run needs redis-server and detectron2: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VP_", "KERAS_"))}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(ROOT / "devstack" / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["name"]: s for s in json.loads((tmp_path / "summary.json").read_text())}
    assert set(steps) == {"finetune", "detect detectron2", "detect torchvision", "classify", "e2e"}
    assert all(s["ok"] for s in steps.values()), steps
    assert [(r["device"], r["batch"]) for r in steps["detect detectron2"]["figures"]["rows"]] == [("cpu", 1), ("cpu", 2)]
    assert steps["classify"]["figures"]["best"] > 0
    # Every image answered (an R101 trained for 2 steps finds no vehicle: "no_vehicle" results); the dry
    # run leaves out the in-process comparison (the bench's own smoke test covers it)
    assert sum(steps["e2e"]["figures"]["status"].values()) == 2 and steps["e2e"]["figures"]["e2e_images_per_s"] > 0
    assert steps["e2e"]["figures"]["efficiency"] is None
    assert (tmp_path / "r101-artifact" / "manifest.json").is_file()
    lines = done.stdout.splitlines()
    assert sum("dry run (not judged)" in line for line in lines) == 4  # detect x2, classify, e2e


def test_the_summary_judges_each_figure_against_its_target():
    steps = [Step("detect detectron2", True, 1.0, "", {"best": 150.0}),
             Step("detect torchvision", True, 1.0, "", {"best": 90.0}),
             Step("classify", False, 1.0, "FAILED: x"),
             Step("e2e", True, 1.0, "", {"efficiency": 0.93, "e2e_images_per_s": 120.0})]
    text = "\n".join(summary(steps, dry_run=False))
    assert "| detect img/s, detectron2 (best batch) | 150.0 | >= 140 | met |" in text
    assert "| detect img/s, torchvision (best batch) | 90.0 | >= 140 | NOT met |" in text
    assert "| classify crops/s, Keras torch backend | n/a | >= 2000 | n/a |" in text
    assert "| end-to-end img/s (efficiency) | 120.0 (0.93) | efficiency >= 0.9 | met |" in text
    assert "| step classify | FAILED in 1 s | | |" in text


def test_bench_rows_reads_the_model_benchmark_table():
    text = ("| model | device | batch | images/s | ms/image |\n|---|---|---|---|---|\n"
            "| detector synthetic-d2-maskrcnn-r101 | cuda   |     4 |     151.2 |       6.6 |\n"
            "| classifier ResNet50 224px | gpu |   128 |    2400.0 |       0.4 |\n")
    rows = bench_rows(text)
    assert [(r["device"], r["batch"], r["per_s"]) for r in rows] == [("cuda", 4, 151.2), ("gpu", 128, 2400.0)]
