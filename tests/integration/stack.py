"""Test helpers shared by the producer and integration tests: reading Celery messages out of Redis,
and waiting for result documents in S3."""

from __future__ import annotations

import json
from typing import Any

from workers.broker import envelope_body


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_url(redis_server: Any) -> str:
    """The URL of the ``redis_server`` fixture (a URL string or an object carrying ``.url``)."""
    return redis_server if isinstance(redis_server, str) else redis_server.url


def queued_tasks(redis_client, queue: str) -> list[tuple[str, list, list[str]]]:
    """(task name, args, names of the chained next tasks) of every message waiting in a kombu Redis
    queue, oldest first."""
    out = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):  # kombu LPUSHes, workers BRPOP
        envelope = json.loads(raw)
        args, _kwargs, embed = json.loads(envelope_body(envelope))
        chained = [step["task"] for step in (embed.get("chain") or [])]
        out.append((envelope["headers"]["task"], args, chained))
    return out


def results_under(s3, bucket: str, prefix: str = "results/") -> dict[str, dict]:
    """Every result document under ``prefix``: source key -> document."""
    docs = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json"):
                continue  # e.g. an image someone put under results/: not a result
            doc = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            docs[obj["Key"][len(prefix) : -len(".json")]] = doc
    return docs


def where_are(stack, redis_client, keys: list[str], *, queues: tuple[str, ...] = ("detect", "classify")) -> str:
    """Where the images of ``keys`` (S3 keys without a result yet) are, for a test that waited in vain:
    on which Redis queue or among the unacked messages (a message names its image's key), or nowhere
    in Redis; the broker's counts, and each process's last warnings and errors. One line per fact."""
    lines = [f"{len(keys)} without a result: {keys[:8]}{' ...' if len(keys) > 8 else ''}"]
    try:
        places: dict[str, list[bytes]] = {f"queue {q}": redis_client.lrange(q, 0, -1) for q in queues}
        places["unacked"] = list(redis_client.hvals("unacked"))
        lines.append("redis: " + ", ".join(f"{name} {len(raw)}" for name, raw in places.items())
                     + f", in-flight marks {len([k for k in redis_client.scan_iter(match='vp:in-flight*')])}")
        for key in keys[:8]:
            found = [name for name, raws in places.items() if any(key.encode() in raw for raw in raws)]
            lines.append(f"  {key}: {', '.join(found) or 'nowhere in Redis'}")
    except Exception as exc:  # noqa: BLE001 - the report must not hide the test's own failure
        lines.append(f"redis unreadable: {type(exc).__name__}: {exc}")
    for proc in stack.processes:
        tail = proc.log_tail(400).splitlines()
        notable = [line[:300] for line in tail if any(word in line for word in ("WARNING", "ERROR", "Traceback",
                                                                              "CRITICAL"))]
        lines.append(f"{proc.name} ({'alive' if proc.alive() else 'exited'}), last of {len(notable)} "
                     "warnings/errors in its log's last 400 lines:")
        lines += [f"  {line}" for line in notable[-6:]]
    return "\n".join(lines)
