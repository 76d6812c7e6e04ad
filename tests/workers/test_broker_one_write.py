"""The workers' Redis transport sends a pipeline of large messages in one write (``workers.broker.OneWrite``).

redis-py sends every value over 6,000 bytes as a piece of its own, one ``sendall`` each; a detect batch's
hand-on (an LPUSH of four ~10 KB classify messages) or a pop's record went to redis-server in nine
segments, and Redis read them in as many reads (docs/scale.md). These tests count the ``sendall`` calls
of the transport's connections on a real redis-server and check that what arrives is what was sent.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from workers import broker
from workers.broker import TRANSPORT, OneWrite, one_write

pytestmark = pytest.mark.integration


def _channel_client(url: str):
    conn = Connection(url, transport=TRANSPORT)
    return conn, conn.default_channel.client


def test_a_pipeline_of_large_messages_is_one_write(redis_server, writes):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    conn, client = _channel_client(url)
    try:
        client.delete("one-write")
        client.ping()  # the connection is open and its handshake done before counting
        messages = [bytes([65 + n]) * (10_000 + n) for n in range(4)]
        writes.clear()
        pipe = client.pipeline(transaction=False)
        pipe.lpush("one-write", *messages).hset("one-write-record", mapping={"a": messages[0], "b": messages[1]})
        pipe.execute()
        assert len(writes) == 1 and writes[0] > sum(map(len, messages)) + 20_000  # both commands, one write
        assert client.lrange("one-write", 0, -1) == messages[::-1]  # LPUSH: the last pushed is first
        assert client.hgetall("one-write-record") == {b"a": messages[0], b"b": messages[1]}
    finally:
        client.delete("one-write", "one-write-record")
        conn.release()


def test_the_stock_connection_would_have_sent_it_in_pieces(redis_server, writes):
    """What the lever removes (fails if redis-py stops cutting large values into pieces: then drop it)."""
    client = redis.Redis(port=redis_server.port)
    client.ping()
    writes.clear()
    client.lpush("one-write", *[b"x" * 10_000] * 4)
    assert len(writes) >= 5
    client.delete("one-write")


def test_beyond_the_cap_the_pieces_go_as_they_are(redis_server, writes, monkeypatch):
    monkeypatch.setattr(broker, "ONE_WRITE_MAX", 50_000)
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    conn, client = _channel_client(url)
    try:
        client.ping()
        big = [b"y" * 30_000, memoryview(b"z" * 30_000)]
        writes.clear()
        client.lpush("one-write", *big)
        assert len(writes) > 1  # 60 KB over a 50 KB cap: redis-py's pieces
        writes.clear()
        client.lpush("one-write", b"w" * 20_000, memoryview(b"v" * 20_000))
        assert len(writes) == 1  # under it, memoryviews too, joined
        assert client.lrange("one-write", 0, -1) == [b"v" * 20_000, b"w" * 20_000, b"z" * 30_000, b"y" * 30_000]
    finally:
        client.delete("one-write")
        conn.release()


@pytest.mark.parametrize("other", [None, "rediss", "socket"])
def test_every_pool_of_the_channel_writes_once(redis_server, other):
    """The synchronous pool and the event loop's pool, whatever class kombu picks for the URL: TCP, TLS or
    a unix socket (their parameters only: nothing connects to the last two)."""
    conn, _client = _channel_client(f"redis://127.0.0.1:{redis_server.port}/0")
    channel = conn.default_channel
    expected = redis.Connection
    try:
        if other == "rediss":
            channel.connection.client = Connection(f"rediss://127.0.0.1:{redis_server.port}/0",
                                                   ssl={"ssl_cert_reqs": "none"})
            expected = redis.SSLConnection
        elif other == "socket":
            channel.connection.client = Connection("redis+socket:///tmp/vp-no-such.sock")
            expected = redis.UnixDomainSocketConnection
        for asynchronous in (False, True):
            cls = channel._connparams(asynchronous=asynchronous)["connection_class"]
            assert issubclass(cls, OneWrite) and issubclass(cls, expected), (asynchronous, cls.__mro__)
            assert one_write(cls) is cls  # never mixed in twice
    finally:
        conn.release()
