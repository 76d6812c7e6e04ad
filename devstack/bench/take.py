"""``python -m devstack.bench take``: what redis-server spends per message on the workers' take step, and on
the ways to it that were measured and not built (docs/scale.md, "The take in the wait's write").

Redis's Lua hashes every byte of each string a script makes (a CropSet message is ~10.5 KB), so what a
take costs depends on how many strings of the message it makes. Each variant here takes ``--batch``
messages of ``--message-bytes`` off a list on a throwaway redis-server (kombu envelopes, as the
workers' queues hold) and records them as unacked; redis-server's ``INFO cpu`` is read before and after
each call, the cost of those two INFO calls (measured alone, the median of as many pairs) taken off.
Variants:

* ``take as built``: ``workers.broker.TAKE_LUA`` (LRANGE, LTRIM, ZADD, HSET of each message as it is);
* ``record built in Lua``: the same, each record kombu's ``[message, "", queue]`` concatenated in Lua
  (the take before ce3bd31);
* ``LRANGE + LTRIM, returned``: the messages through Lua and back, nothing recorded;
* ``LLEN + LTRIM``: no message through Lua (a script's floor, messages freed);
* ``SORT … STORE, recorded by the client``: the tail copied server-side into a per-consumer list
  (``SORT q BY nosort LIMIT … STORE``), read back in the same write, recorded by the client (ZADD,
  HSET, DEL) in a second round trip: a take with no message through Lua.

    python -m devstack.bench take                                  # 8 messages of 10,500 bytes, 3 rounds
    python -m devstack.bench take --message-bytes 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid

import redis

from devstack.servers import redis_server
from workers.broker import TAKE_LUA

RECORD_IN_LUA = TAKE_LUA.replace(
    "records[#records + 1] = payload",
    "records[#records + 1] = '[' .. payload .. ', \"\", ' .. cjson.encode(ARGV[3]) .. ']'")
RETURNED = """
local tail = redis.call('LRANGE', KEYS[3], -tonumber(ARGV[1]), -1)
redis.call('LTRIM', KEYS[3], 0, -(#tail + 1))
return tail
"""
FLOOR = """
local n = redis.call('LLEN', KEYS[3])
redis.call('LTRIM', KEYS[3], 0, -(tonumber(ARGV[1]) + 1))
return n
"""
SORT_STORE = """
local len = redis.call('LLEN', KEYS[3])
if len == 0 then return 0 end
local n = math.min(tonumber(ARGV[1]), len)
redis.call('SORT', KEYS[3], 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[4])
redis.call('LTRIM', KEYS[3], 0, -(n + 1))
return n
"""
KEYS = ["unacked_index", "unacked", "q"]
HOLD = "take:bench"


def _envelope(size: int) -> str:
    """A kombu envelope of about ``size`` bytes, its properties last (as kombu writes them)."""
    head = {"body": "", "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"id": str(uuid.uuid4())}}
    tail = {"properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 0,
                           "delivery_mode": 2, "delivery_tag": str(uuid.uuid4())}}
    bare = len(json.dumps({**head, **tail}))
    return json.dumps({**head, "body": "x" * max(0, size - bare), **tail})


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def _info_pair(client: redis.Redis, calls: int) -> float:
    """Seconds of redis-server CPU that the two INFO calls around one measured call cost (median)."""
    samples = []
    for _ in range(calls):
        start = _cpu(client)
        samples.append(_cpu(client) - start)
    return statistics.median(samples)


def _script_call(client: redis.Redis, script: str):
    sha = client.script_load(script)

    def call(batch: int, payloads: list[str]) -> None:
        client.evalsha(sha, 3, *KEYS, batch, time.time(), "q")
    return call


def _sort_store_call(client: redis.Redis):
    sha = client.script_load(SORT_STORE)

    def call(batch: int, payloads: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(sha, 4, *KEYS, HOLD, batch, time.time(), "q").lrange(HOLD, 0, -1)
        _, taken = pipe.execute()
        tags = [json.loads(raw)["properties"]["delivery_tag"] for raw in taken]
        pipe = client.pipeline(transaction=False)
        pipe.zadd(KEYS[0], {tag: time.time() for tag in tags}).hset(KEYS[1], mapping=dict(zip(tags, taken, strict=True)))
        pipe.delete(HOLD).execute()
    return call


def measure(client: redis.Redis, call, batch: int, size: int, calls: int, info_cost: float) -> float:
    """µs of redis-server CPU per message over ``calls`` takes of ``batch`` messages."""
    spent = 0.0
    for _ in range(calls):
        client.delete(*KEYS, HOLD)
        payloads = [_envelope(size) for _ in range(batch)]
        client.lpush("q", *payloads)
        start = _cpu(client)
        call(batch, payloads)
        spent += _cpu(client) - start - info_cost
        assert client.llen("q") == 0, "the take left messages on the queue"
    return spent / calls / batch * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.bench take", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="messages per take (default 8: the GPU service's batch)")
    p.add_argument("--message-bytes", type=int, default=10_500, help="bytes per message (default 10,500: a CropSet)")
    p.add_argument("--calls", type=int, default=400, help="takes per variant per round (default 400)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the variants alternating (default 3)")
    args = p.parse_args(argv)
    with redis_server() as server:
        client = redis.Redis(port=server.port)
        variants = {"take as built": _script_call(client, TAKE_LUA),
                    "record built in Lua": _script_call(client, RECORD_IN_LUA),
                    "LRANGE + LTRIM, returned": _script_call(client, RETURNED),
                    "LLEN + LTRIM": _script_call(client, FLOOR),
                    "SORT … STORE, recorded by the client": _sort_store_call(client)}
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            info_cost = _info_pair(client, args.calls)
            for name, call in variants.items():
                results[name].append(measure(client, call, args.batch, args.message_bytes, args.calls, info_cost))
    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
          f"{platform.python_version()}; {args.batch} messages of {args.message_bytes:,} bytes per take, "
          f"{args.calls} takes per round, {args.rounds} rounds")
    print("| variant | redis CPU-µs per message (median) | min–max |")
    print("| --- | ---: | ---: |")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}–{max(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
