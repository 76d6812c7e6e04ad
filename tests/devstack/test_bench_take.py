"""``python -m devstack.bench take``: Redis CPU per message of the take step's variants, as a user runs it."""

import pytest

from tests.devstack.bench_run import run_bench

pytestmark = [pytest.mark.integration]

VARIANTS = ["take as built", "record built in Lua", "LRANGE + LTRIM, returned", "LLEN + LTRIM",
            "SORT … STORE, recorded by the client"]


def test_bench_take_prints_a_cost_per_message_for_each_variant():
    done = run_bench(["devstack.bench", "take", "--calls", "30", "--rounds", "1", "--message-bytes", "4000"],
                     timeout=300)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    assert [name for name, *_ in rows] == VARIANTS
    for _name, median, spread in rows:
        low, high = (float(x) for x in spread.split("–"))
        assert low <= float(median) <= high
    # every variant takes each message off the queue (the bench asserts it per call) and costs Redis something
    assert sum(float(median) > 0 for _name, median, _spread in rows) >= 3
