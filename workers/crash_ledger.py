"""Which messages a worker process died on: so that an image that kills every process it reaches
ends as a ``worker_crashed`` result instead of being redelivered forever.

Redis does not count deliveries, and a SIGKILLed (or OOM-killed) process cannot write anything on
its way out. So the work is bracketed instead: before a message is worked on, an *in-flight* mark is
set for it in Redis (the broker's own server); after the work returns, the mark is cleared. A mark
still there when the message is delivered again means the process holding it died: one more crash
is counted for that message, not for the others.

Batches use the same marks to find the culprit. A batch's requests are marked together; if the
process dies, each of them has one crash. On redelivery, requests with a crash are worked on one at
a time, each under its own mark, so the next death is counted against the one request that caused
it, and its batch-mates finish. After ``worker.max_deliveries`` crashes a message is given up.

Marks expire (``ttl_s``, above the task time limit) so a message finished elsewhere leaves nothing.

Only a redelivered message can have a mark left behind (a delivery that died is the only way to leave
one, and the broker marks every message it gives back: kombu's Redis transport sets ``redelivered``
on each message it restores, whether requeued by workers/batching.py or after the visibility
timeout). So :meth:`CrashLedger.triage` checks only the items its caller says were redelivered: a
first delivery costs the broker one SET, and one DEL per batch clears the marks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_FLIGHT = "vp:in-flight:"
CRASHES = "vp:crashes:"


class CrashLedger:
    """Crash counts per message id, kept in Redis."""

    def __init__(self, client, *, max_deliveries: int, ttl_s: int) -> None:
        self.client = client
        self.max_deliveries = max_deliveries
        self.ttl_s = ttl_s

    def crashes(self, ids: Sequence[str]) -> dict[str, int]:
        """Crashes so far per message id, counting one more for each that is still marked in flight
        (its previous delivery died holding it). Call once per delivery, before :meth:`in_flight`."""
        if not ids:
            return {}
        # One round trip, no MULTI/EXEC: a message is delivered to one consumer at a time, so nothing
        # else touches its keys meanwhile. DEL says whether a mark was left behind; one MGET reads the counts.
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.delete(IN_FLIGHT + message_id)  # 1 when a mark was left behind
        pipe.mget([CRASHES + message_id for message_id in ids])
        *left_behind, counts = pipe.execute()
        out = {message_id: int(count or 0) for message_id, count in zip(ids, counts, strict=True)}
        died = [message_id for message_id, gone in zip(ids, left_behind, strict=True) if gone]
        if died:  # rare: one more round trip to count the deaths
            pipe = self.client.pipeline(transaction=False)
            for message_id in died:
                pipe.incr(CRASHES + message_id)
                pipe.expire(CRASHES + message_id, self.ttl_s)
            out.update(zip(died, (int(n) for n in pipe.execute()[::2]), strict=True))
        return out

    def given_up(self, crashes: int) -> bool:
        return crashes >= self.max_deliveries

    def triage(self, items: Sequence[T], key: Callable[[T], str],
               redelivered: Callable[[T], bool] = lambda _item: True) -> tuple[list[tuple[T, int]], list[list[T]]]:
        """One delivery of a batch: ``(given_up, groups)``. Items with no crash share the first group;
        each suspect gets a group of its own (so the next death is its alone); items past
        ``max_deliveries`` come back in ``given_up`` with their crash count. Only items for which
        ``redelivered`` is true are looked up (a first delivery has no crash to count)."""
        crashes = dict.fromkeys((key(item) for item in items), 0)
        crashes.update(self.crashes([key(item) for item in items if redelivered(item)]))
        given_up, fresh, suspects = [], [], []
        for item in items:
            n = crashes[key(item)]
            if self.given_up(n):
                given_up.append((item, n))
            else:
                (suspects if n else fresh).append(item)
        return given_up, ([fresh] if fresh else []) + [[s] for s in suspects]

    @contextlib.contextmanager
    def in_flight(self, ids: Sequence[str]) -> Iterator[None]:
        """Mark ``ids`` in flight for the block; clear the marks (and the counts) only if it returns.

        An exception escaping the block leaves the marks: like a death, it counts against these
        messages at their next delivery, so a bug that fails every time still ends in a result.
        """
        if not ids:
            yield
            return
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.set(IN_FLIGHT + message_id, b"1", ex=self.ttl_s)
        pipe.execute()
        yield
        self.forget(ids)

    def forget(self, ids: Sequence[str]) -> None:
        """Clear marks and counts of messages that were answered."""
        if ids:
            self.client.delete(*[IN_FLIGHT + i for i in ids], *[CRASHES + i for i in ids])
