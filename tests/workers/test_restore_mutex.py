"""A restore sweep cut short by a broker restart must not hold off every worker's sweep for long.

kombu's restore sweep (``QoS.restore_visible``) takes a lock in Redis (``unacked_mutex``, a key with an
expiry) so that workers do not sweep at once. A restart that lands inside a sweep leaves the lock behind:
the sweep cannot release it, and the restarted server (AOF on) still has it. With kombu's 300 s, no
sweep brings back a message that was in flight at the restart for five more minutes. On a real
redis-server, stopped inside a sweep and started again: the lock left behind expires within
``workers.broker.RESTORE_MUTEX_S``, and a later sweep restores the message.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from devstack.processes import wait_until
from devstack.servers import free_port, redis_server
from workers.broker import RESTORE_MUTEX_S, TRANSPORT

pytestmark = pytest.mark.integration

QUEUE = "restore-mutex"


def test_a_lock_left_by_a_sweep_cut_by_a_restart_expires_within_seconds(tmp_path):
    port = free_port()
    server = redis_server(port, data_dir=tmp_path)  # AOF: the restarted server has every key it had
    server.__enter__()
    try:
        client = redis.Redis(port=port)
        queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)
        url = f"redis://127.0.0.1:{port}/0"
        with Connection(url) as conn:
            conn.Producer(serializer="json").publish({"n": 1}, exchange=queue.exchange, routing_key=QUEUE,
                                                     declare=[queue])
        # Taken and never acked: recorded as unacked, visible to a sweep at once (visibility timeout 0 s).
        conn = Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 0})
        with Consumer(conn, [queue], callbacks=[lambda body, message: None], accept=["json"]):
            conn.drain_events(timeout=10)
        assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0
        qos = conn.default_channel.qos
        qos.restore_at_shutdown = False

        stock_restore = qos.restore_by_tag

        def restart_lands_here(tag, client=None, leftmost=False):
            server.__exit__(None, None, None)  # inside the sweep, holding the lock
            return stock_restore(tag, client, leftmost)

        qos.restore_by_tag = restart_lands_here
        with pytest.raises(redis.ConnectionError):
            qos.restore_visible(num=None, interval=1)
        server = redis_server(port, data_dir=tmp_path)
        server.__enter__()
        qos.restore_by_tag = stock_restore
        client = redis.Redis(port=port)
        left = client.pttl("unacked_mutex")
        assert 0 < left <= RESTORE_MUTEX_S * 1000  # the lock is there, for seconds (kombu's own: 300 s)
        assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0  # the message waits for a sweep

        def sweep_restored() -> bool:
            qos.restore_visible(num=None, interval=1)  # a worker's periodic sweep
            return client.llen(QUEUE) == 1

        wait_until(sweep_restored, timeout=RESTORE_MUTEX_S + 20, what="a sweep restoring the message",
                   interval=0.5)
        assert client.hlen("unacked") == 0
        conn.release()
    finally:
        server.__exit__(None, None, None)
