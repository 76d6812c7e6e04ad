"""Flower, with every queue of this project listed (what ``vehicle-flower`` executes).

Why ``detect`` went missing from ``/api/queues/length``: Flower lists the queues of the workers it
has *inspected* (their ``active_queues``), and only when it knows none does it fall back to
``task_default_queue`` plus ``task_queues`` (flower/views/__init__.py, ``get_active_queue_names``).
A worker not inspected yet (started after Flower's broadcast inspect, or too busy to answer within
``--inspect_timeout``) has its queue left out, even while messages pile up in it; with no worker at
all, only the default queue (``detect``) shows. Here the queues our task routes name, and every
queue the broker settings name (``broker.*_queue``: the train workers' queue too), are always added,
whatever Flower learnt from the workers.

    python -m workers.flower_server --port=5555 --address=127.0.0.1   # arguments of `celery flower`
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def project_queues(conf, broker=None) -> set[str]:
    """Every queue a task of this app is routed to, the default queue, and (given the broker settings)
    every queue they name."""
    routes = conf.task_routes or {}
    named = {route["queue"] for route in routes.values() if isinstance(route, dict) and route.get("queue")}
    if broker is not None:
        named |= {value for field, value in vars(broker).items() if field.endswith("_queue") and value}
    return named | {conf.task_default_queue}


def list_queues_always(queues: Iterable[str]) -> None:
    """Make Flower's queue listing (dashboard, broker page, ``/api/queues/length``) include ``queues``."""
    from flower.views import BaseHandler

    original = BaseHandler.get_active_queue_names
    if getattr(original, "_vp_patched", False):
        return
    wanted = frozenset(queues)

    def get_active_queue_names(self):
        return sorted(set(original(self)) | wanted)

    get_active_queue_names._vp_patched = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = get_active_queue_names


def main(argv: list[str] | None = None) -> None:
    from celery.bin.celery import main as celery_main

    from workers.app import app

    list_queues_always(project_queues(app.conf, app.vehicle_settings.broker))
    sys.argv = ["celery", "-A", "workers.app", "flower", *(sys.argv[1:] if argv is None else argv)]
    celery_main()


if __name__ == "__main__":
    main()
