"""``python -m devstack.bench [models|pipeline|broker|take|s3|enqueue|backfill|inprocess] ...``: every benchmark, one entry.

    python -m devstack.bench                          # models in one process (devstack/bench/models.py)
    python -m devstack.bench pipeline --images 200    # the whole stack end to end (pipeline.py)
    python -m devstack.bench broker                   # one Redis broker's cost per image at rates up to
                                                      # its ceiling, the workers' broker code alone (broker.py)
    python -m devstack.bench take                     # Redis CPU per message of the take step and of the
                                                      # ways to it measured and not built (take.py)
    python -m devstack.bench s3                       # CPU per S3 GET and PUT, lean path vs boto3 (s3.py)
    python -m devstack.bench enqueue --keys 20000     # producer enqueue rate (enqueue.py; a throwaway
                                                      # redis-server unless --broker is given)
    python -m devstack.bench backfill ...             # backfill of a large listing (backfill.py)
    python -m devstack.bench inprocess ...            # the pipeline's models in one process (inprocess.py)

The GPU check is a script of its own: ``devstack/bench/gpu_check.sh`` (it installs what the GPU machine lacks).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from devstack.bench import backfill, broker, enqueue, inprocess, models, pipeline, s3, take

COMMANDS = ("models", "pipeline", "broker", "take", "s3", "enqueue", "backfill", "inprocess")


def dispatch(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``(command, its arguments)``; no command (or only flags) means ``models``."""
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], list(argv[1:])
    else:
        command, rest = "models", list(argv)
    if command == "pipeline":
        rest = ["pipeline", *rest]  # pipeline.py's parser has the subcommand itself
    if command == "enqueue" and "--broker" not in rest and "--start-redis" not in rest:
        rest = ["--start-redis", *rest]
    return command, rest


def main(argv: Sequence[str] | None = None) -> int:
    command, rest = dispatch(sys.argv[1:] if argv is None else argv)
    module = {"models": models, "pipeline": pipeline, "broker": broker, "enqueue": enqueue, "backfill": backfill,
              "inprocess": inprocess, "s3": s3, "take": take}[command]
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
