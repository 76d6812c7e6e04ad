"""The producer must stay light: importing and starting it never pulls in an ML framework."""

from __future__ import annotations

import subprocess
import sys

ML_MODULES = ("torch", "torchvision", "tensorflow", "keras", "detectron2")


def test_producer_modules_never_import_torch_or_tensorflow():
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import sys, importlib\n"
        "for name in ('producer.cli', 'producer.listen', 'producer.backfill', 'producer.queue_depth',"
        " 'workers.messages', 'vehicle_core.storage'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != name: raise\n"
        "from producer.cli import _parser\n"
        "_parser().parse_args(['backfill', 's3://b/p', '--dry-run'])\n"
        f"print(sorted(m for m in {ML_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
