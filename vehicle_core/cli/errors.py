"""What every command line of the project shares to fail politely: one line, what is wrong and what to do.

Exit status 2 for a usage problem (bad arguments, settings, a model that cannot be loaded), 1 for a
runtime one (S3 unreachable, credentials missing or refused, a server that would not start).

    parser = OneLineParser(prog="vehicle-results", ...)       # argparse errors: one line, status 2
    parser.add_argument("--log-level", type=log_level)      # info, INFO, Debug ... all accepted
    except Exception as exc: return report("vehicle-results", exc)   # known failures: one line
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from vehicle_core.errors import ConfigError, ModelLoadError, SourceNotFoundError, VehiclePipelineError

USAGE = 2
RUNTIME = 1
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def project_version() -> str:
    """The installed vehicle-pipeline's version (pyproject.toml's), or "unknown" outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vehicle-pipeline")
    except PackageNotFoundError:
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``PROG VERSION`` and exits 0 (every command line of the project has it)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {project_version()}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with status 2; a command's
    own parser (not its subcommands', whose prog has a space) answers ``--version``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if " " not in self.prog:
            add_version(self)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def log_level(text: str) -> str:
    """argparse ``type=`` for ``--log-level``: any case of a logging level name."""
    name = text.strip().upper()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}; use one of {', '.join(LOG_LEVELS).lower()}")
    return name


def s3_uri(text: str) -> tuple[str, str]:
    """argparse ``type=`` for an ``s3://bucket/prefix`` argument: ``(bucket, prefix)``."""
    from vehicle_core.storage import parse_s3_uri

    try:
        return parse_s3_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; write it as s3://bucket/path") from None


def explain(exc: BaseException) -> VehiclePipelineError | None:
    """The project error a failure stands for, with advice; None when it is not one we know (a bug)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from vehicle_core.storage import storage_error

    for cause in _chain(exc):
        if isinstance(cause, VehiclePipelineError):
            return cause
    for cause in _chain(exc):
        if isinstance(cause, BotoCoreError | ClientError):
            return storage_error(cause, "S3", "request")
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def exit_status(error: VehiclePipelineError) -> int:
    """2 for what the user must change in the command or settings (a bucket or key that does not
    exist included), 1 for what went wrong at run time."""
    return USAGE if isinstance(error, ConfigError | ModelLoadError | SourceNotFoundError) else RUNTIME


def report(prog: str, exc: BaseException) -> int:
    """Print one line for a known failure and return its exit status; re-raise an unknown one (a bug)."""
    error = explain(exc)
    if error is None:
        raise exc
    from vehicle_core.config import mask_urls

    print(f"{prog}: {mask_urls(error.message)}", file=sys.stderr)
    return exit_status(error)


def log_format(text: str) -> str:
    """argparse ``type=`` for ``--log-format``: text or json."""
    name = text.strip().lower()
    if name not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"unknown log format {text!r}; use text or json")
    return name


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root logging at ``level`` (a name from :func:`log_level`) in ``fmt`` (vehicle_core.logs)."""
    from vehicle_core.logs import configure

    configure(level, fmt)
    if level != "DEBUG":  # botocore's INFO lines (where it found credentials, endpoints) are noise here
        logging.getLogger("botocore").setLevel(logging.WARNING)
