"""How many messages wait in a Celery queue on Redis (kombu keeps each queue as Redis lists)."""

from __future__ import annotations

# kombu's Redis transport splits a queue by priority into lists named ``queue`` and
# ``queue\x06\x16<priority>`` (default steps 0, 3, 6, 9); count them all.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def redis_queue_depth(redis_client, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those reserved by workers)."""
    names = [queue] + [f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]
    pipe = redis_client.pipeline()
    for name in names:
        pipe.llen(name)
    return int(sum(pipe.execute()))


def depth_probe(broker_url: str, queue: str):
    """A zero-argument callable returning the current depth of ``queue`` at ``broker_url``."""
    import redis

    client = redis.Redis.from_url(broker_url)
    return lambda: redis_queue_depth(client, queue)
