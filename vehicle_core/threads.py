"""Thread counts of the model frameworks in one worker process, from settings.

PyTorch, TensorFlow and OpenCV each size their thread pools to every core of the machine by default.
Several worker processes on one host (a detect and a classify worker, or ``-c 2`` pool processes)
then run ``processes x cores`` busy threads on ``cores`` cores: they preempt each other, caches
thrash, and throughput drops below what one process alone reaches. :func:`configure` gives each
process its share instead:

    threads.configure(settings.worker, processes=pool_size)   # in the worker, once per process
    ...                                                          # load models (torch / TensorFlow)
    threads.apply_loaded()                                       # the stages call this after loading

``worker.threads`` = 0 (auto) means ``usable cores // (worker.host_workers × processes)`` (at least
1): by default a detect and a classify worker share the host, as the README starts them, and each
takes half the cores. Oversubscribing costs more than idle threads: OpenMP threads spin while they
wait, so on two cores a detect and a classify worker of two threads each ran the whole stack at
14.8-15.0 images/s and of one thread each at 19.9-20.5 (docs/benchmarks.md). Any other value is used
as is. ``worker.interop_threads`` sizes the inter-op pools (torch, TensorFlow).

Frameworks imported later in the process are covered too: :func:`configure` sets the variables they
read when they start (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``TF_NUM_INTRAOP_THREADS``,
``TF_NUM_INTEROP_THREADS``), and :func:`apply_loaded` sets the ones already running. Nothing here
imports torch or TensorFlow: a process keeps the one framework it serves with.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from vehicle_core.config import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class ThreadPlan:
    """The thread counts one process runs with, and which frameworks have been given them."""

    threads: int
    interop_threads: int
    sharing: int = 1  # processes sharing the host's cores (host workers x pool processes)
    applied: dict[str, int] = field(default_factory=dict)  # framework -> intra-op threads set


_plan: ThreadPlan | None = None  # this process's plan (inherited by forked children, re-applied there)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, so ``taskset`` and cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan(settings: WorkerSettings, processes: int = 1, host_workers: int | None = None) -> ThreadPlan:
    """The thread counts for one of ``processes`` pool processes of one of ``host_workers`` workers
    (default ``settings.host_workers``) sharing this host's cores."""
    sharing = max(1, processes) * max(1, settings.host_workers if host_workers is None else host_workers)
    threads = settings.threads or max(1, usable_cores() // sharing)
    return ThreadPlan(threads=threads, interop_threads=settings.interop_threads, sharing=sharing)


def configure(settings: WorkerSettings, processes: int = 1, host_workers: int | None = None) -> ThreadPlan:
    """Give this process its share of the cores (see the module docstring); returns the plan.

    Call once per worker process (before or after forking: the plan and the variables are inherited,
    and :func:`apply_loaded` re-applies them). ``processes``: how many processes of this worker share
    the host (the pool's concurrency); ``host_workers`` overrides ``settings.host_workers``.
    """
    global _plan
    _plan = plan(settings, processes, host_workers)
    n, interop = str(_plan.threads), str(_plan.interop_threads)
    # Read by each framework when it starts in this process or in a child started after this.
    os.environ.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n,
                       "TF_NUM_INTEROP_THREADS": interop})
    apply_loaded()
    log.info("framework threads: %d intra-op, %d inter-op per process (%d usable cores shared by %d processes)",
             _plan.threads, _plan.interop_threads, usable_cores(), _plan.sharing)
    return _plan


def current() -> ThreadPlan | None:
    """The plan :func:`configure` set in this process, or None (frameworks keep their defaults)."""
    return _plan


def apply_loaded() -> dict[str, int]:
    """Apply the configured plan to every framework imported so far; no-op before :func:`configure`.

    Returns framework -> intra-op threads set. Cheap and idempotent: model loaders call it after
    importing their framework.
    """
    if _plan is None:
        return {}
    import cv2  # always present (decoding, crops); its pool serves resize and colour conversion

    cv2.setNumThreads(_plan.threads)
    _plan.applied["cv2"] = _plan.threads
    if "torch" in sys.modules:
        _apply_torch(_plan)
    if "tensorflow" in sys.modules:
        _apply_tensorflow(_plan)
    return dict(_plan.applied)


def _apply_torch(p: ThreadPlan) -> None:
    import torch

    torch.set_num_threads(p.threads)
    if torch.get_num_interop_threads() != p.interop_threads:
        try:
            torch.set_num_interop_threads(p.interop_threads)
        except RuntimeError as exc:  # only settable before the first inter-op parallel work
            log.warning("torch inter-op threads stay %d: %s", torch.get_num_interop_threads(), exc)
    p.applied["torch"] = p.threads


def _apply_tensorflow(p: ThreadPlan) -> None:
    import tensorflow as tf

    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == p.threads and \
            threading.get_inter_op_parallelism_threads() == p.interop_threads:
        p.applied["tensorflow"] = p.threads
        return
    try:
        threading.set_intra_op_parallelism_threads(p.threads)
        threading.set_inter_op_parallelism_threads(p.interop_threads)
    except RuntimeError as exc:  # TensorFlow fixes its pools when its runtime starts
        log.warning("TensorFlow already started; its threads stay as they were (%s). Configure threads "
                    "before the first TensorFlow operation.", exc)
        return
    p.applied["tensorflow"] = p.threads
