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

Marks expire (after ``ttl_s`` to ``2 * ttl_s``; ``ttl_s`` is above the visibility timeout) so a
message finished elsewhere leaves nothing. They are fields of one hash per time window of ``ttl_s``
(``vp:in-flight-marks:<window>``, expiring at the end of the next window), not a key each: a batch's
marks are one HSET (+ EXPIREAT) and are cleared by one HDEL, whatever the batch's size, where a key per
message cost the broker a SET each (docs/scale.md, "What each lever bought"). A detect batch's clearing
goes in the write of its hand-on to the classify queue when the ledger is the broker's Redis
(:class:`Clearing`, ``workers.broker.along_with_publish``): nothing after the hand-on can die of these
images, and the batch costs the broker one round trip less.

Only a redelivered message can have a mark left behind (a delivery that died is the only way to leave
one, and the broker marks every message it gives back: kombu's Redis transport sets ``redelivered``
on each message it restores, whether requeued by workers/batching.py or after the visibility
timeout). So :meth:`CrashLedger.triage` checks only the items its caller says were redelivered (in the
windows a mark can still be in, and under the key a mark had before the windows, from a worker of an
earlier release): a first delivery costs the broker nothing per message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: A hash per time window of ``ttl_s``: message id -> 1 while it is worked on.
MARKS = "vp:in-flight-marks:"
#: A key per marked message, as workers before the windows set it: still read on redelivery, never written.
IN_FLIGHT = "vp:in-flight:"
CRASHES = "vp:crashes:"
#: How many windows back a mark can still be: set in window w, its hash expires at the end of w + 1.
WINDOWS_KEPT = 2


@dataclass
class Clearing:
    """How one :meth:`CrashLedger.in_flight` window's marks are cleared: ``commands`` (redis-py method
    name, arguments) for ``client``'s server. A write that goes to that server anyway may carry them
    (``workers.broker.along_with_publish``: the detect batch's hand-on) and set ``sent``; else the window
    sends them itself when it closes."""

    client: Any
    commands: list[tuple[str, tuple]]
    sent: bool = False


class CrashLedger:
    """Crash counts per message id, kept in Redis."""

    def __init__(self, client, *, max_deliveries: int, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.max_deliveries = max_deliveries
        self.ttl_s = ttl_s
        self.clock = clock

    def _window(self) -> int:
        return int(self.clock() // self.ttl_s)

    def crashes(self, ids: Sequence[str]) -> dict[str, int]:
        """Crashes so far per message id, counting one more for each that is still marked in flight
        (its previous delivery died holding it). Call once per delivery, before :meth:`in_flight`."""
        if not ids:
            return {}
        # One round trip, no MULTI/EXEC: a message is delivered to one consumer at a time, so nothing
        # else touches its marks meanwhile. An HDEL (or, for a mark of an earlier release, a DEL) that
        # removes something says a mark was left behind; one MGET reads the counts.
        window = self._window()
        # (one window ahead too: the worker that set a mark may read its clock a little ahead of this one's)
        marks = [MARKS + str(window - back) for back in range(-1, WINDOWS_KEPT + 1)]
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.delete(IN_FLIGHT + message_id)
            for key in marks:
                pipe.hdel(key, message_id)
        pipe.mget([CRASHES + message_id for message_id in ids])
        *removed, counts = pipe.execute()
        per_id = len(marks) + 1
        out = {message_id: int(count or 0) for message_id, count in zip(ids, counts, strict=True)}
        died = [message_id for i, message_id in enumerate(ids) if any(removed[i * per_id:(i + 1) * per_id])]
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
    def in_flight(self, ids: Sequence[str]) -> Iterator[Clearing]:
        """Mark ``ids`` in flight for the block; clear the marks (and the counts) only if it returns.

        An exception escaping the block leaves the marks: like a death, it counts against these
        messages at their next delivery, so a bug that fails every time still ends in a result. The
        block gets the :class:`Clearing`: a write to the same Redis inside it may carry the clearing
        (the marks are then gone from that moment, and the block's end sends nothing).
        """
        if not ids:
            yield Clearing(self.client, [], sent=True)
            return
        window = self._window()
        key = MARKS + str(window)
        # Every mark of the window's hash lives at least ttl_s: the hash expires at the end of the next window.
        self.client.pipeline(transaction=False).hset(key, mapping=dict.fromkeys(ids, b"1")).expireat(
            key, int((window + WINDOWS_KEPT) * self.ttl_s)).execute()
        clearing = Clearing(self.client, _clearing_commands(ids, key))
        yield clearing
        if not clearing.sent:
            self.forget(ids, marks_key=key)

    def forget(self, ids: Sequence[str], marks_key: str | None = None) -> None:
        """Clear the counts of messages that were answered, and their marks in ``marks_key`` (the hash
        :meth:`in_flight` put them in), in one round trip."""
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, args in _clearing_commands(ids, marks_key):
            getattr(pipe, name)(*args)
        pipe.execute()


def _clearing_commands(ids: Sequence[str], marks_key: str | None) -> list[tuple[str, tuple]]:
    commands = [("hdel", (marks_key, *ids))] if marks_key is not None else []
    return [*commands, ("delete", tuple(CRASHES + i for i in ids))]


def marked(client) -> list[str]:
    """Every in-flight mark now set, as message ids (for tests and operators: a SCAN of the windows)."""
    ids = [field for key in client.scan_iter(match=MARKS + "*") for field in client.hkeys(key)]
    ids += [key[len(IN_FLIGHT):] for key in client.scan_iter(match=IN_FLIGHT + "*")]
    return [i.decode() if isinstance(i, bytes) else i for i in ids]
