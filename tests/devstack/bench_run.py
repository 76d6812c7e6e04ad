"""Running a benchmark as its user would, for the benchmarks' smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack.servers import redis_server_binary
from tests.conftest import skip_or_fail


def run_bench(module_args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    """``python -m MODULE_ARGS`` in the environment a user has (no ``AWS_``/``VP_`` variables of this
    session); it needs redis-server (a skip here, a failure under CI). Asserts it exited 0 and returns it."""
    try:
        redis_server_binary()
    except RuntimeError as exc:
        skip_or_fail(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VP_"))}
    done = subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done
