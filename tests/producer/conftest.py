"""A fresh detect queue per test on the session's redis-server, and settings that name it."""

from __future__ import annotations

import pytest
import redis

from tests.integration.stack import redis_url
from vehicle_core.config import load_settings


@pytest.fixture
def detect(redis_server, request):
    """(redis client, queue name, settings whose broker and detect queue are those)."""
    client = redis.Redis.from_url(redis_url(redis_server))
    name = f"detect-st-{request.node.name[:30]}"
    client.delete(name)
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server), "VP_BROKER__DETECT_QUEUE": name})
    return client, name, settings


