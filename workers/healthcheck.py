"""Container healthcheck: ``python -m workers.healthcheck URL`` exits 0 when URL answers HTTP at all.

Any status below 500 counts (Flower's 401 without credentials means it serves); a refused connection, a
time-out or a 5xx exits 1 with the reason on stderr. The compose file's producer and Flower use it.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """(healthy, what was seen) for one GET of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return exc.code < 500, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, repr(exc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m workers.healthcheck URL", file=sys.stderr)
        return 2
    healthy, seen = check(args[0])
    print(f"{args[0]}: {seen}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
