"""``vehicle-flower``: Flower for this project's Celery app, with its doors locked by default.

    vehicle-flower                      # credentials from flower.basic_auth_file or flower.basic_auth
    vehicle-flower --demo               # the demo only: admin:change-me allowed

* Credentials come from settings (``flower.basic_auth_file``, a mounted secret, or
  ``flower.basic_auth`` / ``VP_FLOWER__BASIC_AUTH``), never from the command line: they reach Flower
  through its ``FLOWER_BASIC_AUTH`` environment variable, so ``ps`` does not show them.
* No credentials, malformed ones, or the demo's published ``admin:change-me`` outside ``--demo``:
  refused, with a line saying what to set (exit status 2).
* Flower binds ``flower.address`` (127.0.0.1 unless told otherwise).
* On an SQS broker (``broker.url: sqs://``) it refuses to start: Flower would show nothing there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vehicle_core.config import FlowerSettings
from vehicle_core.errors import ConfigError

DEMO_CREDENTIALS = "admin:change-me"


def credentials(flower: FlowerSettings, *, demo: bool = False) -> str:
    """The ``user:password`` Flower will demand; ConfigError when there is none fit to use."""
    value = flower.basic_auth
    if flower.basic_auth_file:
        try:
            value = Path(flower.basic_auth_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"flower.basic_auth_file {flower.basic_auth_file}: {exc.strerror}") from exc
    if demo and not value:
        value = DEMO_CREDENTIALS
    if not value:
        raise ConfigError("Flower needs credentials: set flower.basic_auth_file (a file holding user:password) "
                          "or VP_FLOWER__BASIC_AUTH=user:password")
    user, sep, password = value.partition(":")
    if not (user and sep and password) or "," in value:
        raise ConfigError("Flower's credentials must be one user:password pair")
    if value == DEMO_CREDENTIALS and not demo:
        raise ConfigError(f"{DEMO_CREDENTIALS} is the demo's published password; choose your own "
                          "(flower.basic_auth_file or VP_FLOWER__BASIC_AUTH)")
    return value


def flower_command(flower: FlowerSettings, *, port: int | None = None, extra: list[str] | None = None,
                   task_events: bool = True) -> list[str]:
    """Flower's argv: address and port only, never the credentials. It runs Flower through
    ``workers.flower_server``, which makes Flower list both queues (see there why it did not).
    ``task_events`` False (``worker.task_events``): Flower must not broadcast ``enable_events`` to the
    workers (it does by default, every few seconds), which would switch their task events back on."""
    events = [] if task_events else ["--enable_events=False"]
    return [sys.executable, "-m", "workers.flower_server", f"--port={port or flower.port}",
            f"--address={flower.address}", *events, *(extra or [])]


def main(argv: list[str] | None = None) -> int:
    from vehicle_core.cli.errors import OneLineParser, report
    from vehicle_core.config import load_settings

    parser = OneLineParser(prog="vehicle-flower", description=__doc__.splitlines()[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    parser.add_argument("--port", type=int, help="default: flower.port")
    parser.add_argument("--demo", action="store_true", help="allow the demo's admin:change-me (loopback demos only)")
    args, rest = parser.parse_known_args(argv)
    try:
        settings = load_settings(args.config)
        if settings.broker.kind == "sqs":
            raise ConfigError("Flower has nothing to show on an SQS broker (no task events, no broadcasts to "
                              "find workers): watch vp_queue_depth on the workers' /metrics and the queues' "
                              "CloudWatch metrics instead (docs/operations.md, two brokers)")
        secret = credentials(settings.flower, demo=args.demo)
    except Exception as exc:  # one line for known failures
        return report("vehicle-flower", exc)
    env = {**os.environ, "FLOWER_BASIC_AUTH": secret}
    command = flower_command(settings.flower, port=args.port, extra=rest, task_events=settings.worker.task_events)
    os.execve(command[0], command, env)  # Flower replaces this process: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
