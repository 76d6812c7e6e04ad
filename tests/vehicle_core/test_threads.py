"""vehicle_core.threads: each worker process's share of the cores reaches torch, TensorFlow and OpenCV.

Thread pools are process-wide (and TensorFlow's are fixed once its runtime starts), so each check
runs in a fresh process."""

import json
import os
import subprocess
import sys

from vehicle_core.config import WorkerSettings, load_settings
from vehicle_core.threads import plan, usable_cores


def _worker(**kw) -> WorkerSettings:
    base = load_settings(env={}).worker
    return WorkerSettings(**{**base.__dict__, **kw})


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_auto_shares_the_usable_cores_between_pool_processes_and_workers():
    cores = usable_cores()
    assert plan(_worker(threads=0, host_workers=1), processes=1).threads == cores
    assert plan(_worker(threads=0, host_workers=1), processes=cores * 4).threads == 1  # never zero
    assert plan(_worker(threads=0, host_workers=1), processes=2).threads == max(1, cores // 2)
    # By default a detect and a classify worker share the host (the README's commands): half each
    assert load_settings(env={}).worker.host_workers == 2
    assert plan(_worker(threads=0), processes=1).threads == max(1, cores // 2)
    assert plan(_worker(threads=0, host_workers=3), processes=2).threads == max(1, cores // 6)
    assert plan(_worker(threads=0), processes=1, host_workers=1).threads == cores  # a caller alone on the host
    assert plan(_worker(threads=3), processes=2).threads == 3  # explicit wins
    assert plan(_worker(interop_threads=2)).interop_threads == 2


def test_settings_reach_torch_and_opencv_in_a_torch_process():
    out = _run("""
import json, sys
import cv2, torch
from vehicle_core import threads
from vehicle_core.config import load_settings
before = torch.get_num_threads()
settings = load_settings(env={"VP_WORKER__THREADS": "1", "VP_WORKER__INTEROP_THREADS": "1"})
applied = threads.configure(settings.worker, processes=1).applied
print(json.dumps({"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                  "cv2": cv2.getNumThreads(), "applied": applied, "tf": "tensorflow" in sys.modules}))
""")
    assert out["torch"] == 1 and out["interop"] == 1 and out["cv2"] == 1
    assert set(out["applied"]) == {"torch", "cv2"}
    assert out["tf"] is False  # configuring threads imports no framework the process does not use


def test_settings_reach_tensorflow_imported_after_configure():
    out = _run("""
import json
from vehicle_core import threads
from vehicle_core.config import load_settings
settings = load_settings(env={"VP_WORKER__THREADS": "1", "VP_WORKER__INTEROP_THREADS": "1"})
threads.configure(settings.worker, processes=1)
import tensorflow as tf
applied = threads.apply_loaded()  # what the classifier loader does after importing Keras
tf.constant(1.0) + 1.0  # the runtime starts with these pools
t = tf.config.threading
print(json.dumps({"intra": t.get_intra_op_parallelism_threads(), "inter": t.get_inter_op_parallelism_threads(),
                  "applied": applied}))
""")
    assert out["intra"] == 1 and out["inter"] == 1
    assert "tensorflow" in out["applied"]
