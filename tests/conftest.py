"""Shared fixtures: real servers on loopback (redis-server, moto's S3+SQS server), started per session.

Like dramatiq's conftest: a test that needs a server it cannot start skips on a laptop but fails
under CI (CI=true), where every server must be present.
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip locally, fail in CI: CI always has Redis and the S3 server."""
    if CI:
        pytest.fail(reason)
    pytest.skip(reason)

# Model fixtures (a small real classifier artifact, ...) live in their own plugin module.
pytest_plugins = ["tests.fixtures_models"]
