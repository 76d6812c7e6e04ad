"""The crash ledger (workers/crash_ledger.py) on a real redis-server: deaths are counted against the
message that was in flight, and a batch's culprit is found without condemning its batch-mates."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tests.integration.stack import redis_url
from workers.crash_ledger import CRASHES, IN_FLIGHT, MARKS, CrashLedger, marked

pytestmark = pytest.mark.integration


class ProcessDied(Exception):
    """Stands for a SIGKILL: the block is left without clearing its marks."""


@pytest.fixture
def ledger(redis_server):
    return CrashLedger(redis.Redis.from_url(redis_url(redis_server)), max_deliveries=3, ttl_s=60)


def _ids(n):
    return [f"test-{uuid.uuid4().hex}" for _ in range(n)]


def _deliver(ledger, ids, kill_on=None):
    """One delivery of ``ids`` as the classify task does it: fresh together, suspects alone."""
    crashes = ledger.crashes(ids)
    fresh = [i for i in ids if crashes[i] == 0 and not ledger.given_up(crashes[i])]
    suspects = [i for i in ids if 0 < crashes[i] and not ledger.given_up(crashes[i])]
    given_up = [i for i in ids if ledger.given_up(crashes[i])]
    finished = []
    for group in ([fresh] if fresh else []) + [[s] for s in suspects]:
        with ledger.in_flight(group):
            if kill_on in group:
                raise ProcessDied
        finished += group
    return finished, given_up


def test_a_message_answered_leaves_no_trace(ledger):
    (one,) = _ids(1)
    assert _deliver(ledger, [one]) == ([one], [])
    assert ledger.crashes([one]) == {one: 0}


def test_each_death_counts_once_and_the_third_gives_up(ledger):
    (poison,) = _ids(1)
    for _ in range(3):
        with pytest.raises(ProcessDied):
            _deliver(ledger, [poison], kill_on=poison)
    assert _deliver(ledger, [poison]) == ([], [poison])


def _counts(ledger, ids):
    """Crash counts as stored, without making a delivery of it (marks left untouched)."""
    return {i: int(ledger.client.get(CRASHES + i) or 0) for i in ids}


def test_the_batch_mates_of_a_poison_message_finish_and_only_it_is_given_up(ledger):
    batch = _ids(8)
    poison = batch[3]
    # The first death leaves the whole batch marked: each of them gets one crash at redelivery
    with pytest.raises(ProcessDied):
        _deliver(ledger, batch, kill_on=poison)
    # Redelivered, each runs alone: the ones before the poison finish (and are forgotten), it dies again
    with pytest.raises(ProcessDied):
        _deliver(ledger, batch, kill_on=poison)
    assert _counts(ledger, batch[:3]) == dict.fromkeys(batch[:3], 0)
    assert _counts(ledger, batch[3:]) == {poison: 1, **dict.fromkeys(batch[4:], 1)}
    # The rest come back: the poison dies a third time, its batch-mates behind it are not charged
    rest = batch[3:]
    with pytest.raises(ProcessDied):
        _deliver(ledger, rest, kill_on=poison)
    finished, given_up = _deliver(ledger, rest)
    assert given_up == [poison] and sorted(finished) == sorted(batch[4:])


def test_an_exception_escaping_the_work_counts_like_a_death(ledger):
    (buggy,) = _ids(1)
    with pytest.raises(ZeroDivisionError), ledger.in_flight([buggy]):
        1 / 0  # noqa: B018
    assert ledger.crashes([buggy]) == {buggy: 1}


def _commands(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items() if name.startswith("cmdstat_")}


def test_a_clean_batch_costs_the_broker_the_same_few_commands_whatever_its_size(ledger):
    # What the broker pays for the ledger on the common path (docs/scale.md), counted by redis-server
    # itself: for a redelivered batch, a DEL and an HDEL per window per message and one MGET to look it
    # up; then one HSET + EXPIREAT to mark it and one HDEL + DEL to clear it: no key per message
    for size in (1, 8, 50):
        ids = _ids(size)
        ledger.client.config_resetstat()
        assert _deliver(ledger, ids) == (ids, [])
        spent = {name: n for name, n in _commands(ledger.client).items() if not name.startswith(("config", "info"))}
        assert spent == {"del": size + 1, "hdel": 4 * size + 1, "mget": 1, "hset": 1, "expireat": 1}


def test_a_first_delivery_costs_four_commands_a_batch_and_only_redeliveries_are_looked_up(ledger):
    ids = _ids(8)
    ledger.client.config_resetstat()
    given_up, groups = ledger.triage(ids, key=str, redelivered=lambda _: False)
    assert (given_up, groups) == ([], [ids])
    with ledger.in_flight(ids):
        pass
    spent = {name: n for name, n in _commands(ledger.client).items() if not name.startswith(("config", "info"))}
    assert spent == {"hset": 1, "expireat": 1, "hdel": 1, "del": 1}
    # A process dies holding two of them: their redelivery (marked by the broker) is looked up, and
    # each becomes a suspect of its own
    with pytest.raises(ProcessDied), ledger.in_flight(ids[:2]):
        raise ProcessDied
    given_up, groups = ledger.triage(ids, key=str, redelivered=lambda i: i in ids[:2])
    assert given_up == [] and groups == [ids[2:], [ids[0]], [ids[1]]]


def test_marks_are_listed_while_held_and_gone_once_cleared(ledger):
    ids = _ids(5)
    with ledger.in_flight(ids):
        assert set(ids) <= set(marked(ledger.client))
    assert not set(ids) & set(marked(ledger.client))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("later", [0.0, 30.0, 61.0, 119.0, 150.0])
def test_a_mark_left_behind_is_found_while_it_lives_whatever_window_it_was_set_in(redis_server, later):
    # Marks live in a hash per window of ttl_s; a death is found at a redelivery up to ttl_s later (and
    # after, while the hash lives), in this window or a later one, by a reader whose clock is a second
    # behind the writer's (at 0: in the window before the one the mark is in)
    # a window of its own per case (the server's hashes do not mix), ahead of the server's clock (a
    # window's hash expires at a time: one in the past would be gone at once)
    window = int(time.time() // 60) + 100 + int(later)
    clock = Clock(window * 60 + 0.5)  # half a second into the window: the reader's clock is in the one before
    ledger = CrashLedger(redis.Redis.from_url(redis_url(redis_server)), max_deliveries=3, ttl_s=60, clock=clock)
    (one,) = _ids(1)
    with pytest.raises(ProcessDied), ledger.in_flight([one]):
        raise ProcessDied
    assert ledger.client.hexists(MARKS + str(window), one)
    clock.now += later - 1.0
    assert ledger.crashes([one]) == {one: 1}
    assert ledger.crashes([one]) == {one: 1}  # the mark went with the first look: not a second death


def test_a_window_expires_after_ttl_and_before_twice_ttl(ledger):
    (one,) = _ids(1)
    with pytest.raises(ProcessDied), ledger.in_flight([one]):
        raise ProcessDied
    (key,) = [k for k in ledger.client.scan_iter(match=MARKS + "*") if ledger.client.hexists(k, one)]
    # set at t in window w (t >= w * ttl), the hash expires at (w + 2) * ttl: between t + ttl and t + 2 * ttl
    assert ledger.ttl_s - 1 <= ledger.client.ttl(key) <= 2 * ledger.ttl_s


def test_a_mark_set_by_a_worker_of_the_earlier_release_still_counts_a_death(ledger):
    # Before the windows each mark was a key of its own; during a rolling upgrade such a mark must count
    (one,) = _ids(1)
    ledger.client.set(IN_FLIGHT + one, b"1", ex=60)
    assert marked(ledger.client).count(one) == 1
    assert ledger.crashes([one]) == {one: 1}
    assert ledger.client.exists(IN_FLIGHT + one) == 0
