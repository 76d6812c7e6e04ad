"""Processes for the dev tools and the tests: start one with its log in a file, wait for a condition,
stop it (its whole process group) gently or not.

The demo (demo.py), the stack (stack.py), the benchmarks (bench/) and the integration tests share these,
so they all run the system the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("vehicle-demo")

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """A condition did not come true before its deadline."""


def wait_until(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.25,
               progress: Callable[[], str] | None = None) -> T:
    """Poll ``condition`` until it returns something truthy; raise :class:`DeadlineExceeded` after ``timeout``.

    This waits on a condition with a deadline; the interval only bounds how often it is checked.
    """
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise DeadlineExceeded(f"timed out after {timeout:.0f}s waiting for {what}")
        if progress and now - last_report >= 5.0:
            log.info("%s ...", progress())
            last_report = now
        time.sleep(min(interval, max(0.0, deadline - now)))


@dataclass
class Process:
    """A child process started in its own session (so its whole group can be signalled)."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start_process(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> Process:
    """Start ``argv`` with its output in ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "ab")  # noqa: SIM115 (owned by the child for its lifetime)
    popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    out.close()
    log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
    return Process(name, popen, log_path)


def stop_process(proc: Process, *, timeout: float = 30.0) -> int | None:
    """SIGTERM the process group (Celery: warm shutdown), then SIGKILL it if it outlives ``timeout``."""
    if proc.alive():
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing it", proc.name, timeout)
    kill_process(proc)
    return proc.popen.returncode


def kill_process(proc: Process) -> None:
    """SIGKILL the process and its children (a crash, as far as Celery and Redis can tell)."""
    _signal_group(proc, signal.SIGKILL)
    proc.popen.wait(30)


def _signal_group(proc: Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # our own child's group: start_new_session made pgid == pid
    except ProcessLookupError:
        pass
